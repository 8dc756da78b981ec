"""The CLI end to end on tiny models and users' own items, and its answers to bad input."""

import json

import pyarrow.parquet as pq
import pytest

from ..conftest import FAMILIES, conflict_items, invoke, only_run, write_items


def test_models_lists_every_family():
    result = invoke("models")
    assert result.exit_code == 0
    for family in (*FAMILIES, "introspected"):
        assert family in result.output


def test_every_family_says_what_the_analyses_must_know():
    from mllm_arb.models.loading import ADAPTERS, IntrospectedAdapter

    assert all(a.quirks for a in (*ADAPTERS, IntrospectedAdapter))
    positions = {a.family: a.positions_from_mask for a in ADAPTERS}
    assert not positions["qwen2_vl"] and not positions["qwen2_5_vl"]  # their own 3-D positions, said in their quirks
    assert all("3-D rotary" in a.quirks for a in ADAPTERS if not a.positions_from_mask)


def test_cfg_prints_the_composed_config_and_runs_nothing(tmp_path):
    result = invoke("evaluate", "--cfg", "model=qwen2_5_vl_tiny", "data.limit=32", f"output_dir={tmp_path}")
    assert result.exit_code == 0
    assert "path: tiny:qwen2_5_vl" in result.output and "limit: 32" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_writes_a_run_directory(family, tmp_path):
    items = write_items(tmp_path / "data")
    out = tmp_path / "out"
    result = invoke("evaluate", f"model={family}_tiny", "data=jsonl", f"data.path={items}", "batch_size=2", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    run = only_run(out, "evaluate")
    results = json.loads((run / "results.json").read_text())
    for cond in ("text_following", "vision_following", "consistent", "image_only", "text_only", "no_instruction"):
        m = results["mfr"][cond]["mfr"]
        assert m["n"] == 3 and 0.0 <= m["ci_low"] <= m["mean"] <= m["ci_high"] <= 1.0
    rows = pq.read_table(run / "samples.parquet").to_pylist()
    assert len(rows) == 18 and all(0.0 <= r["p_follow"] <= 1.0 for r in rows)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["dataset_fingerprint"] == results["dataset_fingerprint"] and "score" in manifest["timings_s"]


def test_build_data_then_evaluate_from_the_saved_dataset_with_generation(tmp_path):
    items = write_items(tmp_path / "data")
    out = tmp_path / "out"
    assert invoke("build-data", "data=jsonl", f"data.path={items}", f"output_dir={out}").exit_code == 0
    dataset = only_run(out, "build-data") / "dataset"
    result = invoke(
        "evaluate", "model=llava_tiny", "data=disk", f"data.path={dataset}", "conditions=[text_following]",
        "scoring.generate_tokens=2", f"output_dir={out}",
    )
    assert result.exit_code == 0, result.output
    rows = pq.read_table(only_run(out, "evaluate") / "samples.parquet").to_pylist()
    assert len(rows) == 3 and all(r["generated_class"] in ("following", "competitor", "other") for r in rows)
    fp_built = json.loads((only_run(out, "build-data") / "results.json").read_text())["fingerprint"]
    assert json.loads((only_run(out, "evaluate") / "results.json").read_text())["dataset_fingerprint"] == fp_built


def _llama_dir(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def _no_variants(tmp_path):
    from mllm_arb.core.records import ConflictItem

    from ..conftest import solid_image

    it = ConflictItem("x", "color", "What color?", "blue sky", "blue", "It is blue.", solid_image(), "It is a blue sky.")
    return write_items(tmp_path / "data", [it])


BAD_INPUT = {
    "missing model path": (lambda p: ["model.path=/no/such/model"], "does not exist"),
    "unsupported architecture": (lambda p: [f"model.path={_llama_dir(p)}"], "unsupported architecture"),
    "unknown config group option": (lambda p: ["model=no_such_model"], "no_such_model"),
    "unknown key": (lambda p: ["data.limt=3"], "limt"),
    "missing mandatory value": (lambda p: ["data=jsonl"], "path"),
    "corrupt image": (lambda p: ["data=jsonl", f"data.path={write_items(p / 'data', corrupt=True)}"], "corrupt image"),
    "answer with no variants": (lambda p: ["model=llava_tiny", "data=jsonl", f"data.path={_no_variants(p)}"], "tells it apart"),
    "empty dataset": (lambda p: ["data=jsonl", f"data.path={write_items(p / 'data', items=[])}"], "no items"),
    "unknown condition": (lambda p: ["model=llava_tiny", "conditions=[text_folowing]"], "text_folowing"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gets_one_clear_line_and_writes_nothing(case, tmp_path):
    make_args, expected = BAD_INPUT[case]
    out = tmp_path / "out"
    result = invoke("evaluate", *make_args(tmp_path), f"output_dir={out}")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0] and expected in lines[0], result.output
    assert not out.exists() or not any(out.rglob("results.json"))


def test_build_data_filters_with_the_model_and_reports_it(tmp_path):
    items = write_items(tmp_path / "data", conflict_items(4))
    out = tmp_path / "out"
    result = invoke("build-data", "model=llava_tiny", "data=jsonl", f"data.path={items}", "build_data.filter_with_model=true", f"output_dir={out}")
    results_file = next(out.rglob("results.json"))
    results = json.loads(results_file.read_text())
    f = results["filter"]
    assert f["n_total"] == 4 and f["n_kept"] == sum(v["kept"] for v in f["per_task"].values())
    if f["n_kept"]:
        assert result.exit_code == 0 and results["n_items"] == f["n_kept"]
    else:
        assert result.exit_code == 2 and "nothing kept" in result.output


def test_model_config_naming_the_wrong_family_is_caught(tmp_path):
    items = write_items(tmp_path / "data")
    result = invoke("evaluate", "model=llava_tiny", "model.family=gemma3", "data=jsonl", f"data.path={items}", f"output_dir={tmp_path}")
    assert result.exit_code == 2 and "not gemma3" in result.output


@pytest.mark.parametrize("name", ["it's", "back\\slash", "q'\\'x", "sp ace", "plain"])
def test_a_heads_path_with_quotes_or_backslashes_reaches_the_config_unchanged(name, tmp_path):
    """--heads and --from become a Hydra override the tool writes itself: any path must survive it."""
    from mllm_arb.cli.app import head_overrides
    from mllm_arb.runtime.config import resolved

    folder = tmp_path / name
    folder.mkdir()
    heads = folder / "heads.json"
    heads.write_text("{}")
    assert resolved(head_overrides(heads=heads)).sweep.heads_file == str(heads.resolve())


def test_a_heads_path_with_an_interpolation_is_refused(tmp_path):
    folder = tmp_path / "x${y}"
    folder.mkdir()
    (folder / "heads.json").write_text("{}")
    result = invoke("ablate", "--heads", str(folder / "heads.json"), f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 2 and "cannot be passed through the configuration" in result.output, result.output
