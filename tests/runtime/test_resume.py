"""Resume: a run SIGKILLed mid-stage continues from its saved batches (`--resume RUN_DIR`, in one process
or sharded over two), recomputes none of them, and ends with the tables and results of an uninterrupted
run; bad resumes are refused and leave everything as it was."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from mllm_arb.runtime.config import compose
from mllm_arb.runtime.runs import LOCK_NAME, RunDir

from ..conftest import invoke, only_run
from ..conftest import one_thread_invoke, torchrun, unit_ranks


def run_and_kill(args, out, stage, at_least):
    """Start the CLI in a subprocess, SIGKILL it once `at_least` batches of `stage` are saved."""
    proc = subprocess.Popen([sys.executable, "-m", "mllm_arb.cli", *args, f"output_dir={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # one thread, like the reference run
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob(f"*/*/*/partial/{stage}/*.json"))) >= at_least:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    return only_run(out, args[0])


def snapshot(folder):
    """Every file of a run folder, but the lock, which each attempt to open the folder takes anew."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


# a blocking sweep small enough for a test: 2 random sets, one dose point, one control
SWEEP = ["sweep.n_random=2", "sweep.n_random_dose=2", "sweep.ks=[0.25]", "sweep.controls=[image_only]", "scoring.n_boot=50"]
CASES = {  # the evaluate and ablate runs resume in one process, the analyze run under torchrun with two;
    # keep_partial: the test compares the saved batches before and after (a complete run deletes them)
    "evaluate": (["evaluate", "keep_partial=true", "model=llava_tiny", "data.n_items=30", "batch_size=1", "conditions=[text_following,vision_following]"],
                 "score", ["samples.parquet"], ["results.json"], 1),
    # ablate ranks its heads first (partial/rank-ablation/), then blocks them batch by batch (partial/ablate/)
    "ablate": (["ablate", "keep_partial=true", "model=llava_tiny", "data.n_items=12", "batch_size=1", *SWEEP],
               "ablate", ["samples.parquet", "scores.parquet"], ["results.json", "heads.json"], 1),
    "analyze": (["analyze", "keep_partial=true", "model=llava_tiny", "data.n_items=10", "batch_size=1", "analysis.edges=[image:last,context:last]"],
                "knockout", ["knockout.parquet", "lens.parquet"], ["results.json", "findings.json"], 2),
}


@pytest.mark.parametrize("command", list(CASES))
def test_sigkilled_run_resumes_to_the_uninterrupted_result(command, tmp_path):
    args, stage, tables, jsons, n_procs = CASES[command]
    run = run_and_kill(args, tmp_path / "killed", stage, at_least=3)
    assert not (run / "results.json").exists()
    saved = snapshot(run / "partial")
    n_saved = sum(1 for k in saved if k.startswith(f"{stage}/") and k.endswith(".json"))
    assert n_saved >= 3

    if n_procs == 1:
        result = one_thread_invoke(command, "--resume", str(run))
        assert result.exit_code == 0, result.output
    else:
        result = torchrun(command, "--resume", str(run), n=n_procs)
        assert result.returncode == 0, result.stderr[-3000:]
        new = {k: r for k, r in unit_ranks(run).items() if f"{k}.json" not in saved}
        assert set(new.values()) == {0, 1}  # both ranks computed their share of what was left
    manifest = json.loads((run / "manifest.json").read_text())
    batches = manifest["batches"][stage]
    assert batches["reused"] == n_saved and batches["computed"] == batches["total"] - n_saved > 0
    assert manifest["resumes"][0]["saved_batches"][stage] == n_saved
    after = snapshot(run / "partial")
    assert all(after[k] == v for k, v in saved.items() if k.endswith(".json"))  # saved batches never rewritten

    assert one_thread_invoke(*args, f"output_dir={tmp_path / 'whole'}").exit_code == 0
    whole = only_run(tmp_path / "whole", command)
    for table in tables:
        assert pq.read_table(run / table).to_pylist() == pq.read_table(whole / table).to_pylist(), table
    for name in jsons:
        assert json.loads((run / name).read_text()) == json.loads((whole / name).read_text()), name


def test_a_complete_run_folds_its_saved_batches_into_its_tables(tmp_path):
    """Once the tables and results.json are written, partial/ goes (a complete run is never resumed);
    the manifest still says how many batches were computed."""
    args = ["evaluate", "model=llava_tiny", "data.n_items=6", "batch_size=2", "conditions=[text_following]"]
    assert invoke(*args, f"output_dir={tmp_path / 'a'}").exit_code == 0
    assert invoke(*args, "keep_partial=true", f"output_dir={tmp_path / 'b'}").exit_code == 0
    folded, kept = only_run(tmp_path / "a", "evaluate"), only_run(tmp_path / "b", "evaluate")
    assert not (folded / "partial").exists() and len(list((kept / "partial" / "score").glob("*.json"))) == 3
    assert json.loads((folded / "manifest.json").read_text())["batches"]["score"]["computed"] == 3
    rows = [r for p in sorted((kept / "partial" / "score").glob("*.json")) for r in json.loads(p.read_text())["rows"]]
    assert pq.read_table(folded / "samples.parquet").to_pylist() == rows


def unfinished_run(tmp_path, overrides):
    """A run directory as a crash right after its creation leaves it."""
    cfg = compose([*overrides, f"output_dir={tmp_path / 'out'}"])
    OmegaConf.resolve(cfg)
    return RunDir.create(cfg.output_dir, "evaluate", cfg.model.name, cfg).path


def one_error_line(result, expected):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0] and expected in lines[0], result.output


OVERRIDES = ["model=llava_tiny", "data.n_items=2", "conditions=[text_following]"]


def test_resume_with_another_config_is_refused_and_touches_nothing(tmp_path):
    run = unfinished_run(tmp_path, OVERRIDES)
    before = snapshot(run)
    result = invoke("evaluate", "--resume", str(run), *OVERRIDES, "batch_size=3", f"output_dir={tmp_path / 'out'}")
    one_error_line(result, "batch_size: 16 → 3")
    assert snapshot(run) == before
    # the same overrides as the saved config are accepted, and the run completes in place
    result = invoke("evaluate", "--resume", str(run), *OVERRIDES, f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 0, result.output
    assert (run / "results.json").exists() and only_run(tmp_path / "out", "evaluate") == run
    # a complete run is not resumed again (nothing would be left to do, and nothing may be overwritten)
    done = snapshot(run)
    one_error_line(invoke("evaluate", "--resume", str(run)), "complete")
    assert snapshot(run) == done


@pytest.mark.parametrize("case,expected", [
    ("missing", "no such directory"),
    ("not a run", "not a run directory"),
    ("other command", "not 'analyze'"),
])
def test_bad_resume_targets_get_one_clear_line(case, expected, tmp_path):
    target = {"missing": lambda: tmp_path / "nope", "not a run": lambda: tmp_path,
              "other command": lambda: unfinished_run(tmp_path, OVERRIDES)}[case]()
    (tmp_path / "stray.txt").write_text("keep me")
    before = snapshot(tmp_path)
    one_error_line(invoke("analyze", "--resume", str(target)), expected)
    assert snapshot(tmp_path) == before


def test_rank_heads_resumes_from_the_batches_a_crash_left(tmp_path):
    """What a crash leaves behind (some batches saved, no results) is rebuilt from an uninterrupted run's
    directory: resuming it recomputes only the missing batches and ends with the same ranking."""
    import shutil

    args = ["rank-heads", "model=llava_tiny", "data.n_items=8", "batch_size=2", "sweep.methods=[attribution,dla]", "keep_partial=true"]
    assert invoke(*args, f"output_dir={tmp_path / 'out'}").exit_code == 0
    whole = only_run(tmp_path / "out", "rank-heads")
    crashed = tmp_path / "moved" / whole.name  # a run directory keeps its identity wherever it lies
    shutil.copytree(whole, crashed, ignore=shutil.ignore_patterns("results.json", "heads.json", "scores.parquet", "plots"))
    dropped = sorted((crashed / "partial" / "rank-dla").glob("*.json"))[1:]
    for p in dropped:
        p.unlink()
    kept = snapshot(crashed / "partial")
    assert invoke("rank-heads", "--resume", str(crashed)).exit_code == 0
    batches = json.loads((crashed / "manifest.json").read_text())["batches"]
    assert batches["rank-attribution"]["computed"] == 0 and batches["rank-dla"]["computed"] == len(dropped) > 0
    assert all(snapshot(crashed / "partial")[k] == v for k, v in kept.items())
    assert json.loads((crashed / "manifest.json").read_text())["command"] == "rank-heads"
    assert pq.read_table(crashed / "scores.parquet").to_pylist() == pq.read_table(whole / "scores.parquet").to_pylist()
    for name in ("results.json", "heads.json"):
        assert json.loads((crashed / name).read_text()) == json.loads((whole / name).read_text()), name


def test_amplify_resumes_both_sweeps_from_the_batches_a_crash_left(tmp_path):
    """amplify's two sweeps (top heads at every α, then random heads at the best α) each resume from
    their saved batches: a crash's leftovers, rebuilt from an uninterrupted run, end in the same run."""
    import shutil

    args = ["amplify", "model=llava_tiny", "data.n_items=8", "batch_size=2", "sweep.alphas=[1,4]", *SWEEP, "keep_partial=true"]
    assert one_thread_invoke(*args, f"output_dir={tmp_path / 'out'}").exit_code == 0
    whole = only_run(tmp_path / "out", "amplify")
    crashed = tmp_path / "moved" / whole.name
    shutil.copytree(whole, crashed, ignore=shutil.ignore_patterns("results.json", "heads.json", "*.parquet", "plots"))
    dropped = {stage: sorted((crashed / "partial" / stage).glob("*.json"))[::2] for stage in ("amplify", "amplify_random")}
    for paths in dropped.values():
        for p in paths:
            p.unlink()
    kept = snapshot(crashed / "partial")
    result = one_thread_invoke("amplify", "--resume", str(crashed))
    assert result.exit_code == 0, result.output
    batches = json.loads((crashed / "manifest.json").read_text())["batches"]
    assert batches["rank-ablation"]["computed"] == 0
    for stage, paths in dropped.items():
        assert batches[stage]["computed"] == len(paths) > 0 and batches[stage]["reused"] > 0, stage
    assert all(snapshot(crashed / "partial")[k] == v for k, v in kept.items())
    for table in ("samples.parquet", "scores.parquet"):
        assert pq.read_table(crashed / table).to_pylist() == pq.read_table(whole / table).to_pylist(), table
    for name in ("results.json", "heads.json"):
        assert json.loads((crashed / name).read_text()) == json.loads((whole / name).read_text()), name


def test_resume_refuses_a_heads_file_edited_since_the_run_started(tmp_path):
    """Saved blocking batches were measured with the heads the run started with: never mix in others."""
    import shutil

    from ..conftest import invoke as cli_invoke, only_run as only

    base = ["model=llava_tiny", "data.n_items=12", "batch_size=2", "keep_partial=true"]
    sweep = ["sweep.n_random=2", "sweep.n_random_dose=2", "sweep.ks=[0.25]", "sweep.controls=[image_only]", "scoring.n_boot=50"]
    out = tmp_path / "out"
    assert cli_invoke("rank-heads", *base, "sweep.methods=[dla]", f"output_dir={out}").exit_code == 0
    mine = tmp_path / "mine.json"
    shutil.copy(only(out, "rank-heads") / "heads.json", mine)
    assert cli_invoke("ablate", *base, *sweep, "--heads", str(mine), f"output_dir={out}").exit_code == 0
    run = only(out, "ablate")
    (run / "results.json").unlink()  # as if it had crashed before the end
    for p in sorted((run / "partial" / "ablate").glob("*.json"))[1:]:
        p.unlink()
    # every result file stays as it was (the manifest only logs the refused attempt in its resume history)
    saved = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "manifest.json"}
    edited = json.loads(mine.read_text())
    edited["ranking"] = list(reversed(edited["ranking"]))
    edited["heads"] = [[r["layer"], r["head"]] for r in edited["ranking"][: len(edited["heads"])]]
    mine.write_text(json.dumps(edited))
    result = cli_invoke("ablate", "--resume", str(run))
    assert result.exit_code == 2 and "no longer holds the heads this run started with" in result.output, result.output
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "manifest.json"} == saved


def test_resume_refuses_a_model_replaced_at_the_same_path_and_accepts_a_copy_of_it(tmp_path):
    """Saved batches were computed with the checkpoint the run started with: a model retrained in place
    is refused (nothing touched); the same files copied anew (new times, same contents) are accepted."""
    import shutil

    from mllm_arb.models.tiny import save_tiny_model

    model, pristine = tmp_path / "model", tmp_path / "pristine"
    save_tiny_model("llava", model)
    shutil.copytree(model, pristine)
    args = ["model=llava_tiny", f"model.path={model}", "data.n_items=2", "conditions=[text_following]", f"output_dir={tmp_path / 'out'}"]
    assert invoke("evaluate", *args).exit_code == 0
    run = only_run(tmp_path / "out", "evaluate")
    assert json.loads((run / "manifest.json").read_text())["model_fingerprint"]
    (run / "results.json").unlink()  # as if it had crashed before the end
    save_tiny_model("llava", model, seed=1)  # retrained in place
    before = snapshot(run)
    one_error_line(invoke("evaluate", "--resume", str(run)), "changed since the run started")
    assert snapshot(run) == before
    shutil.rmtree(model)
    shutil.copytree(pristine, model)
    result = invoke("evaluate", "--resume", str(run))
    assert result.exit_code == 0, result.output
    assert (run / "results.json").exists()


def test_a_model_fingerprint_reads_what_loading_reads_by_content_not_time(tmp_path, monkeypatch):
    from mllm_arb.models import fingerprint

    monkeypatch.setenv("MLLM_ARB_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava"}')
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 4000)
    (model / "README.md").write_text("a model card")
    (model / "eval_results.json").write_text('{"eval_seconds": 1.0}')
    (model / "pytorch_model.bin").write_bytes(b"old weights, not read: there are safetensors")
    assert [p.name for p in fingerprint.model_files(model)] == ["config.json", "model.safetensors"]
    first = fingerprint.weights_fingerprint(model)
    assert first and len(first) == 16 and (tmp_path / "cache" / "fingerprints.json").exists()
    # times, the model card, logs and files loading does not read do not count
    os.utime(weights, ns=(1, 1))
    (model / "README.md").write_text("an edited model card")
    (model / "eval_results.json").write_text('{"eval_seconds": 2.0}')
    (model / "LICENSE").write_text("a licence")
    assert fingerprint.weights_fingerprint(model) == first
    # one byte anywhere in the weights does, and so does the config
    edited = bytearray(weights.read_bytes())
    edited[500_000] ^= 1
    weights.write_bytes(bytes(edited))
    os.utime(weights, ns=(2, 2))  # a file system's clock may tick coarser than two writes in a test
    assert fingerprint.weights_fingerprint(model) != first
    edited[500_000] ^= 1
    weights.write_bytes(bytes(edited))
    os.utime(weights, ns=(3, 3))
    assert fingerprint.weights_fingerprint(model) == first
    (model / "config.json").write_text('{"model_type": "qwen2_vl"}')
    assert fingerprint.weights_fingerprint(model) != first
