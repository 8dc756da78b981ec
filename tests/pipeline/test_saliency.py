"""Attention saliency on every family's tiny model: the recorded weights are the model's own attention,
the gradients are those of the model's own attention outputs, and the pair averages are what they say."""

import pytest
import torch

from mllm_arb.core.prompt import render_all
from mllm_arb.core.records import Condition
from mllm_arb.core.scoring import answer_ids, binary_scores
from mllm_arb.interventions.attention_weights import record_attention_weights
from mllm_arb.models.loading import load_adapter
from mllm_arb.pipeline.analyze.saliency import pair_saliency, saliency_maps, saliency_rows, summarise_saliency

from ..conftest import FAMILIES, conflict_items


def _setup(family, impl):
    adapter = load_adapter(f"tiny:{family}", attn_implementation=impl)
    samples = render_all(conflict_items(3), [Condition.VISION_FOLLOWING])
    batch = adapter.build_batch(samples)
    ids = [answer_ids(adapter.tokenizer, s) for s in samples]
    return adapter, batch, ids


@pytest.mark.parametrize("family", FAMILIES)
def test_saliency_is_the_gradient_of_the_models_own_attention(family):
    """Against transformers' own `output_attentions` on an eager model: same weights, same |A ⊙ ∂L/∂A|."""
    adapter, batch, ids = _setup(family, "eager")
    model = adapter.model
    with torch.enable_grad():
        out = model(**batch.inputs, use_cache=False, output_attentions=True)
        rows = torch.arange(len(batch))
        log_odds = binary_scores(out.logits[rows, torch.tensor(batch.last)].float(), ids)[0]
        # one entry per layer with attention (Qwen3.5's linear-attention layers have no weights)
        attn = list(out.attentions)
        grads = torch.autograd.grad(log_odds.sum(), attn)
    layers = list(adapter.parts.head_layers)
    assert len(attn) == len(layers)
    expected = torch.full((adapter.parts.n_layers, *attn[0].shape[:1], *attn[0].shape[2:]), float("nan"))
    expected[layers] = torch.stack([(a.detach() * g).abs().sum(1) for a, g in zip(attn, grads)]).float()
    got = saliency_maps(adapter, batch, ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7, equal_nan=True)
    assert got[layers].abs().sum() > 0


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_recording_leaves_an_sdpa_model_as_it_was(family):
    adapter, batch, _ = _setup(family, "sdpa")
    with torch.no_grad():
        before = adapter.model(**batch.inputs, use_cache=False).logits
        with record_attention_weights(adapter) as weights:
            during = adapter.model(**batch.inputs, use_cache=False).logits
        after = adapter.model(**batch.inputs, use_cache=False).logits
    assert sorted(weights) == list(range(adapter.parts.n_layers))
    assert adapter.model.config.get_text_config()._attn_implementation == "sdpa"
    real = batch.inputs["attention_mask"].bool()  # padding rows attend to nothing: eager and sdpa differ there
    torch.testing.assert_close(during[real], before[real], rtol=1e-4, atol=1e-5)  # eager during, sdpa around it
    assert torch.equal(after, before)
    for w in weights.values():  # each row's weights over keys sum to 1 where the row attends at all
        sums = w.sum(-1)
        assert torch.all(((sums - 1).abs() < 1e-4) | (sums == 0))


def test_pair_saliency_averages_the_causal_entries_of_each_row():
    adapter, batch, ids = _setup("llava", "sdpa")
    maps = torch.rand(2, len(batch), *batch.inputs["input_ids"].shape[1:2] * 2)
    got = pair_saliency(maps, batch, ("context", "instruction"))
    for row, spans in enumerate(batch.spans):
        entries = [(q, k) for q in spans["instruction"] for k in spans["context"] if k <= q]
        for layer in range(2):
            want = sum(float(maps[layer, row, q, k]) for q, k in entries) / len(entries)
            assert got[layer, row].item() == pytest.approx(want, rel=1e-5)
    # the context comes before the instruction: the reverse pair has no causal entry
    assert torch.isnan(pair_saliency(maps, batch, ("instruction", "context"))).all()


def test_saliency_rows_and_summary():
    adapter, _, _ = _setup("llava", "sdpa")
    samples = render_all(conflict_items(3), [Condition.TEXT_FOLLOWING, Condition.TEXT_ONLY])
    edges = [("image", "last"), ("context", "last")]
    rows = saliency_rows(adapter, samples, edges, batch_size=2)
    n_layers = adapter.parts.n_layers
    image_rows = [r for r in rows if r["edge"] == "image->last"]
    assert {r["setting"] for r in image_rows} == {"text_following"}  # text-only prompts have no image
    assert len(rows) == 3 * n_layers * 2 + 3 * n_layers
    assert all(r["saliency"] >= 0 for r in rows)
    single = saliency_rows(adapter, samples, edges, batch_size=1)  # padding changes nothing
    key = lambda r: (r["setting"], r["item_id"], r["edge"], r["layer"])  # noqa: E731
    assert [key(r) for r in sorted(single, key=key)] == [key(r) for r in sorted(rows, key=key)]
    for a, b in zip(sorted(single, key=key), sorted(rows, key=key)):
        assert a["saliency"] == pytest.approx(b["saliency"], rel=1e-3, abs=1e-7)
    summary = summarise_saliency(rows, n_boot=50)
    curve = summary["text_following"]["context->last"]
    assert [p["layer"] for p in curve] == list(range(n_layers))
    assert all(p["ci_low"] <= p["mean"] <= p["ci_high"] and p["n"] == 3 for p in curve)


def test_analyze_with_saliency_writes_its_curves_and_plots(tmp_path):
    import json

    from ..conftest import invoke, only_run, write_items

    items = write_items(tmp_path / "data")
    out = tmp_path / "out"
    result = invoke("analyze", "model=llava_tiny", "data=jsonl", f"data.path={items}", "batch_size=2", f"output_dir={out}",
                    "analysis.saliency=true", "analysis.lens=false", "analysis.edges=[image:last,context:instruction]")
    assert result.exit_code == 0, result.output
    run = only_run(out, "analyze")
    results = json.loads((run / "results.json").read_text())
    for setting in ("text_following", "vision_following"):
        curves = results["saliency"][setting]
        assert list(curves) == ["image->last", "context->instruction"]
        assert all([p["layer"] for p in pts] == list(range(results["n_layers"])) for pts in curves.values())
        assert (run / "plots" / f"saliency_{setting}.png").stat().st_size > 5000
    assert (run / "saliency.parquet").exists()
    report = invoke("report", str(run))
    assert report.exit_code == 0, report.output
    page = (run / "report.html").read_text()
    assert "<h3>Attention saliency</h3>" in page and page.count("Attention saliency |A ⊙ ∂L/∂A|") >= 2
