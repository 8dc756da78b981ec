"""Grids: a local Hydra multirun (joblib launcher) over models × dataset sizes, each job a normal run
directory, a summary of the jobs; the SLURM (submitit) launcher config composes; bad grids are refused."""

import json

import pytest
from omegaconf import OmegaConf

from ..conftest import invoke, only_run, write_items


def test_local_grid_runs_every_job_and_summarises_them(tmp_path):
    out, good, missing = tmp_path / "out", write_items(tmp_path / "data"), tmp_path / "gone.jsonl"
    result = invoke("grid", "evaluate", "model=llava_tiny,qwen2_vl_tiny", "data=jsonl", f"data.path={good},{missing}",
                    "conditions=[text_following]", f"output_dir={out}")
    # the two jobs whose items file is missing fail (and say why); the others still run, and the grid reports both
    assert result.exit_code == 1, result.output
    assert "2 of 4 jobs failed" in result.output
    grid = only_run(out, "grid")
    summary = json.loads((grid / "results.json").read_text())
    assert summary["n_jobs"] == 4 and summary["n_ok"] == 2
    assert summary["sweeps"] == ["model=llava_tiny,qwen2_vl_tiny", f"data.path={good},{missing}"]
    combos = set()
    for job in summary["jobs"]:
        model = job["overrides"][0].split("=")[1]
        path = next(o for o in job["overrides"] if o.startswith("data.path=")).split("=", 1)[1]
        combos.add((model, path))
        assert (grid / "jobs" / str(job["job"]) / ".hydra" / "overrides.yaml").exists()  # Hydra's record of the job
        if path == str(missing):
            assert job["status"] == "failed" and "not found" in job["error"]
            continue
        assert job["status"] == "ok"
        run = out.joinpath(job["run_dir"]) if not job["run_dir"].startswith("/") else type(out)(job["run_dir"])
        cfg = OmegaConf.load(run / "config.yaml")  # an ordinary run directory of that job's config
        assert cfg.model.name == model and cfg.data.path == path and run.parent.name == model
        results = json.loads((run / "results.json").read_text())
        assert job["headline"]["mfr"]["text_following"] == results["mfr"]["text_following"]["mfr"]["mean"]
    assert combos == {(m, p) for m in ("llava_tiny", "qwen2_vl_tiny") for p in (str(good), str(missing))}
    assert len(list((out / "evaluate").glob("*/*"))) == 2
    # a grid folder reports as its finished jobs: two models, so one page needs --compare
    single = invoke("report", str(grid), "--out", str(tmp_path / "one.html"))
    assert single.exit_code == 2 and "several models" in single.output, single.output
    both = invoke("report", "--compare", str(grid), "--out", str(tmp_path / "grid.html"))
    assert both.exit_code == 0, both.output
    page = (tmp_path / "grid.html").read_text()
    assert "llava_tiny" in page and "qwen2_vl_tiny" in page
    from mllm_arb.report.study import load_studies

    assert sorted(s.model for s in load_studies([grid])) == ["llava_tiny", "qwen2_vl_tiny"]  # not a model called "evaluate"


def test_a_grid_value_out_of_range_is_refused_before_any_job(tmp_path):
    result = invoke("grid", "evaluate", "model=llava_tiny,qwen2_vl_tiny", "data.n_items=0,2", f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 2 and "data.n_items=0: must be at least 1" in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,expected", [
    (["evaluate", "model=llava_tiny"], "no swept override"),
    (["evaluate", "model=llava_tiny,qwen2_vl_tiny", "output_dir=a,b"], "cannot be swept"),
    (["frobnicate", "model=llava_tiny,qwen2_vl_tiny"], "grid runs one of"),
    (["evaluate", "model=llava_tiny,no_such_model"], "no_such_model"),
    (["evaluate", "model=llava_tiny,qwen2_vl_tiny", "hydra.launcher.n_jobz=3"], "n_jobz"),
])
def test_bad_grids_get_one_clear_line_and_run_nothing(args, expected, tmp_path):
    result = invoke("grid", *args[:2], *args[2:], f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0] and expected in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_slurm_launcher_config_composes_for_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'mllm-arb[slurm]'")
    from hydra import compose, initialize_config_dir

    from mllm_arb.core.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.partition == "gpu"
    assert launcher.timeout_min > 0 and "additional_parameters" in launcher


def test_a_job_can_compose_configs_inside_hydra():
    """`grid run` jobs compose their stages' configs while Hydra holds its global instance."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mllm_arb.runtime.config import compose
    from mllm_arb.core.paths import conf_dir
    from mllm_arb.pipeline.grid import _compose_allowed

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        with pytest.raises(ValueError, match="already initialized"):
            compose(["model=llava_tiny"])
        with _compose_allowed():
            assert compose(["model=llava_tiny"]).model.name == "llava_tiny"
        assert GlobalHydra.instance().is_initialized()  # Hydra's own state is back
