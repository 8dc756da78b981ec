"""Identity and correctness tests of the interventions (head edits, edge knockout, logit lens) on the
tiny model of every family, with a padded batch (left padding, rows of different lengths)."""

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from mllm_arb.core.prompt import render_all
from mllm_arb.core.records import Condition
from mllm_arb.interventions import (
    HeadEdit,
    capture_residuals,
    component_contributions,
    edit_heads,
    head_outputs,
    knock_out,
    lens_logits,
    mean_head_outputs,
    record_heads,
    scale_heads,
    steer_heads,
)
from mllm_arb.core.prompt import GROUPS
from mllm_arb.core.scoring import answer_ids
from mllm_arb.models.loading import load_adapter

from ..conftest import FAMILIES, conflict_items

KO_EDGES = [("context", "last"), ("image", "instruction"), ("context", "instruction")]


def ko_edges(adapter, layers):
    """KO_EDGES, or one of them where a knocked-out layer mixes by linear attention (Qwen3.5): there every
    target must lose the same sources (interventions/knockout.py), which these three together do not."""
    return KO_EDGES[2:] if set(layers) & adapter.parts.linear else KO_EDGES


@pytest.fixture(scope="module")
def loaded():
    """`loaded(family, impl)` -> (adapter, batch of 3 padded rows, their samples); built once per module."""
    cache = {}

    def get(family, impl="sdpa"):
        if (family, impl) not in cache:
            adapter = load_adapter(f"tiny:{family}", attn_implementation=impl)
            samples = render_all(conflict_items(3), [Condition.TEXT_FOLLOWING])
            batch = adapter.build_batch(samples)
            assert len({int(m.sum()) for m in batch.inputs["attention_mask"]}) == 3, "rows should differ in length"
            cache[(family, impl)] = (adapter, batch, samples)
        return cache[(family, impl)]

    return get


@torch.no_grad()
def logits(adapter, batch, **kw):
    return adapter.model(**batch.inputs, use_cache=False, **kw).logits


def n_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def last_logits_per_row(adapter, samples, run):
    """Last-position logits of each sample run alone (batch of 1, no padding) through `run(batch)`."""
    rows = []
    for sample in samples:
        single = adapter.build_batch([sample])
        rows.append(run(single)[0, single.last[0]])
    return torch.stack(rows)


def at_last(batch, out):
    return out[torch.arange(len(batch)), torch.tensor(batch.last)]


# ------------------------------------------------------------------------------------------ heads
@pytest.mark.parametrize("family", FAMILIES)
def test_head_scale_one_is_identity_and_zeroing_removes_attention(loaded, family):
    adapter, batch, _ = loaded(family)
    parts = adapter.parts
    base = logits(adapter, batch)
    hooks = n_hooks(adapter.model)
    every_head = parts.heads()
    with edit_heads(adapter, scale_heads(every_head, 1.0)):
        assert torch.equal(logits(adapter, batch), base)
    layer = parts.head_layers[-1]
    with edit_heads(adapter, scale_heads([(layer, h) for h in range(parts.n_heads)], 0.0)):
        zeroed = logits(adapter, batch)
    # reference: the layer's attention output replaced by what o_proj makes of a zero input (its bias, if any)
    o_proj = parts.o_proj(layer)
    handle = o_proj.register_forward_hook(lambda m, args, out: torch.nn.functional.linear(torch.zeros_like(args[0]), m.weight, m.bias))
    try:
        reference = logits(adapter, batch)
    finally:
        handle.remove()
    torch.testing.assert_close(zeroed, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(zeroed, base, atol=1e-4), "removing a layer's attention should change the logits"
    assert n_hooks(adapter.model) == hooks
    with pytest.raises(RuntimeError, match="boom"), edit_heads(adapter, scale_heads(every_head, 0.0)):
        raise RuntimeError("boom")
    assert n_hooks(adapter.model) == hooks
    assert torch.equal(logits(adapter, batch), base)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_edits_batched_equal_single(loaded, family):
    """Position-restricted amplification + mean ablation + zeroing: padded batch == rows run alone."""
    adapter, batch, samples = loaded(family)
    first, last = adapter.parts.head_layers[0], adapter.parts.head_layers[-1]
    means = mean_head_outputs(head_outputs(adapter, batch, [first]), batch.group_mask("context"))

    def run(b):
        edits = [
            HeadEdit(first, 1, scale=3.0, positions=b.group_mask("last")),
            HeadEdit(first, 2, scale=0.0, mean=means[(first, 2)]),
            HeadEdit(last, 0, scale=0.0),
        ]
        with edit_heads(adapter, edits, positions=b.group_mask("instruction") | b.group_mask("last")):
            return logits(adapter, b)

    batched = at_last(batch, run(batch))
    torch.testing.assert_close(batched, last_logits_per_row(adapter, samples, run), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched, at_last(batch, logits(adapter, batch)), atol=1e-4)


def test_steer_heads_on_plain_model_and_head_records(loaded):
    adapter, batch, _ = loaded("llava")
    heads = [(0, 1), (1, 3)]
    with edit_heads(adapter, scale_heads(heads, 2.5)):
        expected = logits(adapter, batch)
    with steer_heads(adapter.model, heads, 2.5):  # a bare model: the decoder is found by introspection
        assert torch.equal(logits(adapter, batch), expected)
    outs = head_outputs(adapter, batch, [0, 1])
    assert outs[1].shape == (*batch.inputs["input_ids"].shape, adapter.parts.n_heads, adapter.parts.head_dim(1))
    # attribution patching needs gradients at the head outputs
    with record_heads(adapter, [1], detach=False) as record:
        out = adapter.model(**batch.inputs, use_cache=False).logits
        grad = torch.autograd.grad(out[:, -1].sum(), record[1])[0]
    assert grad.shape == record[1].shape and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="out of range"):
        with edit_heads(adapter, [HeadEdit(0, adapter.parts.n_heads)]):
            pass


# ------------------------------------------------------------------------------------------ knockout
def _registered(name_part="mllm_arb_attention_"):
    return [k for k in (*AttentionInterface._global_mapping, *AttentionMaskInterface._global_mapping) if name_part in k]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_empty_knockout_is_identity_and_restores(loaded, family, impl):
    adapter, batch, samples = loaded(family, impl)
    model = adapter.model
    text_cfg, vision_cfg = model.config.get_text_config(), model.config.vision_config
    vision_impl = vision_cfg._attn_implementation
    base = logits(adapter, batch)
    with knock_out(adapter, batch, [], layers=range(adapter.parts.n_layers)) as blocked:
        assert text_cfg._attn_implementation.startswith("mllm_arb_attention_")
        assert vision_cfg._attn_implementation == vision_impl, "the vision tower keeps its attention"
        assert not blocked.any()
        assert torch.equal(logits(adapter, batch), base)
    assert text_cfg._attn_implementation == impl and not _registered()
    # edges whose groups are empty: no instruction without an instruction
    plain = adapter.build_batch(render_all(conflict_items(3), [Condition.NO_INSTRUCTION]))
    plain_base = logits(adapter, plain)
    with knock_out(adapter, plain, [("instruction", "last"), ("image", "instruction")], layers=[0, 1]):
        assert torch.equal(logits(adapter, plain), plain_base)
    with pytest.raises(RuntimeError, match="boom"), knock_out(adapter, batch, ko_edges(adapter, [0]), [0]):
        raise RuntimeError("boom")
    assert text_cfg._attn_implementation == impl and not _registered()
    assert torch.equal(logits(adapter, batch), base)


@pytest.mark.parametrize("family", FAMILIES)
def test_knockout_zeroes_exactly_the_blocked_edges(loaded, family):
    adapter, batch, _ = loaded(family, "eager")
    # attention weights come from the layers with attention only (Qwen3.5's linear layers have none)
    layers = adapter.parts.head_layers
    last = layers[-1]
    base = adapter.model(**batch.inputs, use_cache=False, output_attentions=True)
    with knock_out(adapter, batch, KO_EDGES, layers=[last]) as blocked:
        ko = adapter.model(**batch.inputs, use_cache=False, output_attentions=True)
    assert blocked.any() and len(ko.attentions) == len(layers)
    for i in range(len(layers) - 1):  # layers before the chosen one see exactly the baseline
        assert torch.equal(ko.attentions[i], base.attentions[i])
    weights, before = ko.attentions[-1], base.attentions[-1]  # [B, H, T, T]
    mask = blocked[:, None].expand_as(weights)
    assert (before[mask] > 0).all(), "the blocked edges carried attention before"
    assert (weights[mask] == 0).all(), "blocked edges must carry exactly zero weight"
    assert (weights[~mask & (before > 0)] > 0).all(), "every other edge keeps its weight"
    real = batch.inputs["attention_mask"].bool()
    assert torch.isfinite(ko.logits[real]).all()
    assert not torch.allclose(at_last(batch, ko.logits), at_last(batch, base.logits), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_knockout_batched_equals_single_and_sdpa_equals_eager(loaded, family):
    sdpa, batch, samples = loaded(family, "sdpa")
    eager, eager_batch, _ = loaded(family, "eager")

    def run_with(adapter):
        def run(b):  # layer 0: Qwen3.5's is linear attention, whose knockout must not depend on the padding either
            with knock_out(adapter, b, ko_edges(adapter, [0]), layers=[0]):
                return logits(adapter, b)

        return run

    batched = at_last(batch, run_with(sdpa)(batch))
    # rows alone have no padding: sdpa then passes no mask at all (is_causal), which the knockout materialises
    torch.testing.assert_close(batched, last_logits_per_row(sdpa, samples, run_with(sdpa)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched, at_last(eager_batch, run_with(eager)(eager_batch)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_nested_knockouts_equal_the_combined_one(loaded, impl):
    adapter, batch, _ = loaded("llava", impl)
    with knock_out(adapter, batch, KO_EDGES, layers=[0, 1]):
        combined = logits(adapter, batch)
    with knock_out(adapter, batch, KO_EDGES[:1], layers=[0, 1]), knock_out(adapter, batch, KO_EDGES[1:], layers=[0, 1]):
        nested = logits(adapter, batch)
    torch.testing.assert_close(nested, combined)
    assert adapter.model.config.get_text_config()._attn_implementation == impl and not _registered()


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_knockout_never_attends_to_nothing(loaded, family):
    adapter, batch, _ = loaded(family)
    every_edge = [(src, dst) for src in GROUPS for dst in GROUPS]
    with knock_out(adapter, batch, every_edge, layers=range(adapter.parts.n_layers)) as blocked:
        out = logits(adapter, batch)
    real = batch.inputs["attention_mask"].bool()
    assert torch.isfinite(out[real]).all()
    assert not blocked.diagonal(dim1=1, dim2=2).any(), "a position keeps attending to itself"


# ------------------------------------------------------------------------------------------ lens
@pytest.mark.parametrize("family", FAMILIES)
def test_lens_reproduces_logits_and_decomposes_the_residual(loaded, family):
    adapter, batch, samples = loaded(family)
    logits(adapter, batch)  # transformers adds its own output-recording hooks at a model's first forward pass
    hooks = n_hooks(adapter.model)
    for positions in ("last", "image", "instruction"):
        trace = capture_residuals(adapter, batch, positions)
        assert trace.pre.shape[:2] == (adapter.parts.n_layers, len(batch))
        torch.testing.assert_close(lens_logits(adapter, trace.final), trace.logits, atol=1e-5, rtol=1e-5)
        # embeddings + every attention, MLP, late (Gemma 4's per-layer input and layer scale) and
        # between-layer write = the final residual
        gap = trace.gap if trace.gap is not None else torch.zeros_like(trace.pre)
        assert (trace.gap is not None) == bool(adapter.gap_writer) and trace.sublayers == adapter.components()
        assert list(trace.late) == [name for _, name in adapter.late] + (["layer_scale"] if adapter.layer_scale else [])
        late = sum((w for w in trace.late.values()), torch.zeros_like(trace.pre))
        if trace.late:  # each a real write, not a rounding
            assert all(w.abs().amax() > 1e-3 for w in trace.late.values())
        rebuilt = trace.pre[0] + trace.attn.sum(0) + trace.mlp.sum(0) + late.sum(0) + gap.sum(0)
        torch.testing.assert_close(rebuilt, trace.final, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(trace.out[:-1] + gap[:-1], trace.pre[1:])
        torch.testing.assert_close(trace.stream()[-1], trace.final, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lens_logits(adapter, trace.out[-1] + gap[-1]), trace.logits, atol=1e-5, rtol=1e-5)
        if adapter.gap_writer:  # DeepStack writes at image positions in the first layers, nowhere else
            assert (gap.abs().sum(-1) > 0).any().item() == (positions == "image")
    assert torch.equal(trace.positions[trace.valid], batch.group_mask("instruction").nonzero()[:, 1])
    ids = [answer_ids(adapter.tokenizer, s) for s in samples]
    contrib = component_contributions(adapter, batch, [a.following for a in ids], [a.competitor for a in ids])
    assert contrib.sublayers == adapter.components()
    assert adapter.components()[-1:] == ((adapter.gap_component,) if adapter.gap_writer else adapter.components()[-1:])
    assert contrib.following.shape == (len(batch), 1, adapter.parts.n_layers, len(contrib.sublayers))
    telescoped = contrib.start_following + contrib.following.sum((-1, -2))
    torch.testing.assert_close(telescoped, contrib.final_following, atol=1e-4, rtol=1e-5)
    model_last = at_last(batch, logits(adapter, batch))
    expected = torch.stack([torch.logsumexp(model_last[i, list(a.competitor)], 0) for i, a in enumerate(ids)])
    torch.testing.assert_close(contrib.final_competitor[:, 0], expected, atol=1e-4, rtol=1e-5)
    assert contrib.of("mlp")["difference"].shape == (len(batch), 1, adapter.parts.n_layers)
    assert n_hooks(adapter.model) == hooks
