"""`mllm-arb analyze` end to end, batching invariance of the flow analyses, and bad input."""

import json

import pytest
import torch

from mllm_arb.core.prompt import render_all
from mllm_arb.core.records import CONFLICT_CONDITIONS
from mllm_arb.core.verdicts import VERDICTS, holds_of
from mllm_arb.models.loading import load_adapter
from mllm_arb.pipeline.analyze.flow import STUDY_EDGES, KnockoutPlan, knockout_rows, lens_rows, summarise_lens

from ..conftest import conflict_items
from ..conftest import invoke, only_run, write_items


@pytest.mark.parametrize("model", ["qwen2_vl_tiny", "qwen3_vl_moe_tiny"])  # qwen3_vl_moe: DeepStack and a sparse MLP
def test_analyze_writes_results_findings_and_plots(model, tmp_path):
    items = write_items(tmp_path / "data")
    out = tmp_path / "out"
    result = invoke("analyze", f"model={model}", "data=jsonl", f"data.path={items}", "batch_size=2", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    run = only_run(out, "analyze")
    results = json.loads((run / "results.json").read_text())
    n_layers = results["n_layers"]
    for setting in ("text_following", "vision_following"):
        curves = results["knockout"][setting]
        assert [tuple(e.split("->")) for e in curves] == list(STUDY_EDGES)
        assert all([p["center"] for p in pts] == list(range(n_layers)) for pts in curves.values())
        w = results["window"]  # each window's actual layers: clipped at the decoder's ends
        assert all(p["layers"] == [max(0, p["center"] - (w - 1) // 2), min(n_layers - 1, p["center"] + w // 2)]
                   for pts in curves.values() for p in pts)
        assert len(results["lens"]["agreement"][setting]) == n_layers
        for edge, spans in results["cumulative"][setting].items():  # from l to the last, from the first to l
            assert [p["layer"] for p in spans["from"]] == [p["layer"] for p in spans["until"]] == list(range(n_layers))
            whole = spans["from"][0]
            assert whole["mean"] == spans["until"][-1]["mean"]  # both block every layer
    findings = json.loads((run / "findings.json").read_text())
    assert set(findings) == {"a_transfer_peak", "b_direct_image_negligible", "c_late_mlp_inertia", "d_anchor_agreement"}
    for f in findings.values():
        assert f["verdict"] in VERDICTS and f["holds"] == holds_of(f["verdict"]) and len(f["interval"]) == 2
    for stem in ("knockout_text_following", "knockout_vision_following", "lens_text_following", "agreement",
                 "cumulative_from_vision_following", "cumulative_until_text_following"):
        assert (run / "plots" / f"{stem}.png").stat().st_size > 5000
        assert (run / "plots" / f"{stem}.svg").exists()
    assert "Findings" in result.output and "verdict" in result.output


def test_flow_analyses_do_not_depend_on_batch_size():
    adapter = load_adapter("tiny:gemma3")
    samples = render_all(conflict_items(3), CONFLICT_CONDITIONS)
    plan = KnockoutPlan(edges=(("context", "instruction"), ("image", "last")), window=1, n_layers=adapter.parts.n_layers)
    one = knockout_rows(adapter, samples, plan, batch_size=1)
    many = knockout_rows(adapter, samples, plan, batch_size=3)
    key = lambda r: (r["setting"], r["item_id"], r["edge"], r["center"])  # noqa: E731
    one, many = sorted(one, key=key), sorted(many, key=key)
    assert [key(r) for r in one] == [key(r) for r in many]
    assert torch.allclose(torch.tensor([r["delta"] for r in one]), torch.tensor([r["delta"] for r in many]), atol=1e-4)
    l1, l3 = lens_rows(adapter, samples, 1), lens_rows(adapter, samples, 3)
    k2 = lambda r: (r["setting"], r["item_id"], r["layer"])  # noqa: E731
    l1, l3 = sorted(l1, key=k2), sorted(l3, key=k2)
    for col in ("last_mlp_following", "instruction_lens_log_odds"):
        assert torch.allclose(torch.tensor([r[col] for r in l1]), torch.tensor([r[col] for r in l3]), atol=1e-4)
    summary = summarise_lens(l3, adapter.parts.n_layers)
    assert summary["components"]["text_following"]["last"]["all"]["n"] == 3


@pytest.mark.parametrize("override,expected", [
    ("analysis.edges=[image:nowhere]", "nowhere"),
    ("analysis.edges=[image->last]", "quote values"),
    ("analysis.window=99", "window"),
])
def test_bad_analysis_options_are_clear(tmp_path, override, expected):
    items = write_items(tmp_path / "data")
    result = invoke("analyze", "model=llava_tiny", "data=jsonl", f"data.path={items}", override, f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 2 and expected in result.output
    assert not (tmp_path / "out").exists()


def test_analyze_runs_on_the_shipped_organism(tmp_path):
    from mllm_arb.core.paths import CHECKPOINT_DIR

    if not (CHECKPOINT_DIR / "config.json").exists():
        pytest.skip("the organism checkpoint is not in the package")
    out = tmp_path / "out"
    result = invoke("analyze", "data.n_items=8", "batch_size=8", "analysis.edges=[context:instruction,image:last]", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    results = json.loads((only_run(out, "analyze") / "results.json").read_text())
    assert results["n_layers"] >= 8
    base = results["knockout"]["text_following"]["context->instruction"][0]["mfr_before"]
    assert base >= 0.75, "the organism follows text instructions"
