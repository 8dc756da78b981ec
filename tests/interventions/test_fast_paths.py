"""Every optimised sweep against its straightforward path, on the tiny model of every family: prefix
reuse (resuming a recorded pass at any layer), suffix sweeps (recomputing only the positions an
intervention can change), last-position sweeps (variants as query columns), stacked variants, the batched
head scan, the batched knockout sweep, the hybrid ranking and hybrid-proposed exact verification.
Same numbers within float tolerance."""

from contextlib import nullcontext

import pytest
import torch

from mllm_arb.pipeline.analyze.flow import STUDY_EDGES, KnockoutPlan, knockout_branches, knockout_rows
from mllm_arb.pipeline.heads.methods import (
    Removal,
    log_odds_under,
    ablation_scores,
    attribution_scores,
    edited_log_odds,
    head_means,
    hybrid_scores,
    method_scores,
    n_verified,
    PairedBatches,
    paired_log_odds,
    passes_per_sample,
    prepare,
    verification_candidates,
    verified_scores,
)
from mllm_arb.core.prompt import render_all
from mllm_arb.core.records import CONFLICT_CONDITIONS, Condition
from mllm_arb.interventions import edit_heads, knock_out, knock_out_rows, knockout_mask, scale_heads
from mllm_arb.interventions.prefix import PrefixRun, max_columns, max_variants, variant_columns, variant_rows, whole_passes
from mllm_arb.models.loading import load_adapter
from mllm_arb.pipeline.heads.arms import Arm, run_arms

from ..conftest import FAMILIES, conflict_items

TOL = dict(rtol=1e-5, atol=1e-5, equal_nan=True)  # NaN: the scores of layers without heads (Qwen3.5's linear attention)


@pytest.fixture(scope="module")
def tiny():
    """`tiny(family, impl)` -> (adapter, prepared batches: 3 padded items × 2 settings); built once."""
    cache = {}

    def get(family, impl="sdpa"):
        if (family, impl) not in cache:
            adapter = load_adapter(f"tiny:{family}", attn_implementation=impl)
            cache[(family, impl)] = (adapter, prepare(adapter, render_all(conflict_items(3), CONFLICT_CONDITIONS), 3))
        return cache[(family, impl)]

    return get


def at(adapter, *heads):
    """`heads` as (i, h) pairs with i counting the layers that have attention heads (-1: the last of them),
    so that one test names the same heads on every family, Qwen3.5's linear-attention layers skipped."""
    layers = adapter.parts.head_layers
    return tuple((layers[i], h) for i, h in heads)


def n_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------ prefix reuse
@pytest.mark.parametrize("family", FAMILIES)
def test_resuming_at_every_layer_gives_the_plain_forward_logits_stacked_or_not(tiny, family):
    adapter, preps = tiny(family)
    batch = preps[0].batch
    plain = adapter.last_logits(batch)
    hooks = n_hooks(adapter.model)  # after a first pass: transformers installs its own hooks lazily
    run = PrefixRun(adapter, batch)
    assert n_hooks(adapter.model) == hooks
    torch.testing.assert_close(run.logits, plain, **TOL)
    seen = []
    for layer, hidden in run.states():
        seen.append(layer)
        for n_variants in (1, 3):
            out = run.resume(layer, hidden, n_variants)
            assert out.shape == (n_variants * len(batch), run.logits.shape[1])
            for v in range(n_variants):
                torch.testing.assert_close(out[v * len(batch) : (v + 1) * len(batch)], run.logits, **TOL)
    assert seen == list(range(adapter.parts.n_layers))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_last_layers_mlp_at_the_final_position_alone_gives_the_same_bits(tiny, family):
    """Resumed passes read only the final position after the last layer, so its MLP runs there alone
    (`_mlp_at_final`): the logits are those of the MLP over every position (within float rounding: a
    product of a few rows may take another kernel), and the hook is gone after."""
    adapter, preps = tiny(family)
    batch = preps[0].batch
    run = PrefixRun(adapter, batch)
    assert run.last_is_final  # left padding
    mlp = adapter.parts.mlp(adapter.parts.n_layers - 1)
    widths = []
    # the positions the MLP ran on: its input as the forward got it, after `_mlp_at_final` (Llama 4's MoE
    # returns its rows flattened, so its output cannot tell)
    handle = mlp.register_forward_hook(lambda m, args, kwargs, out: widths.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
                                       with_kwargs=True)
    try:
        hidden = dict(run.states())[1]
        widths.clear()
        fast = run.resume(1, hidden, 2)
        run._final_is_last = False  # the MLP over every position
        slow = run.resume(1, hidden, 2)
    finally:
        handle.remove()
    # the tiny Qwen3-VL's DeepStack writes after its last layer too: there the MLP keeps every position; so
    # does Llama 4's, whose layer reshapes the MLP's output to its input (`narrow_last_mlp`)
    narrow = (run.n_layers - 1) not in run.gaps.writes and adapter.narrow_last_mlp
    assert widths == [1 if narrow else run.n_tokens, run.n_tokens]
    assert widths[0] == 1 or family.startswith("qwen3_vl") or family == "llama4"
    torch.testing.assert_close(fast, slow, **TOL)
    torch.testing.assert_close(fast[: len(batch)], run.logits, **TOL)
    assert not mlp._forward_pre_hooks


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_a_head_edit_in_one_row_block_of_a_stack_equals_that_edit_in_a_full_forward(tiny, family):
    """Stacked variants are independent: block v's edit changes block v exactly as a full pass would."""
    adapter, preps = tiny(family)
    batch, n = preps[0].batch, len(preps[0].batch)
    run = PrefixRun(adapter, batch)
    layer = adapter.parts.n_layers - 1
    hidden = dict(run.states())[layer]
    everywhere = torch.ones(batch.inputs["input_ids"].shape, dtype=torch.bool)
    with edit_heads(adapter, scale_heads([(layer, 1)], 0.0, positions=variant_rows(n, 2, 1, everywhere))):
        out = run.resume(layer, hidden, 2)
    with edit_heads(adapter, scale_heads([(layer, 1)], 0.0)):
        edited = adapter.last_logits(batch)
    torch.testing.assert_close(out[:n], run.logits, **TOL)
    torch.testing.assert_close(out[n:], edited, **TOL)
    assert not torch.allclose(edited, run.logits)


def test_variant_rows_selects_one_block():
    where = torch.tensor([[True, False], [False, True]])
    rows = variant_rows(2, 3, 1, where)
    assert rows.shape == (6, 2) and rows[2:4].equal(where) and not rows[:2].any() and not rows[4:].any()
    assert variant_rows(2, 3, 2).tolist() == [False] * 4 + [True] * 2


def test_max_variants_is_at_least_one_and_grows_with_the_vocabulary(tiny):
    adapter, _ = tiny("llava")
    n = max_variants(adapter, 100)
    assert n >= 1 and max_variants(adapter, 10_000) <= n


# ------------------------------------------------------------------------------------ head scan
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_head_scan_equals_one_forward_per_head(tiny, family):
    adapter, preps = tiny(family)
    zero = Removal("zero", "all")
    naive = ablation_scores(adapter, preps, zero, fast=False)
    assert naive.nan_to_num().abs().max() > 0
    # a layer without heads is not scored: NaN throughout, and nowhere else
    assert torch.isnan(naive[:, sorted(adapter.parts.linear)]).all() and not naive[:, list(adapter.parts.head_layers)].isnan().any()
    torch.testing.assert_close(ablation_scores(adapter, preps, zero), naive, **TOL)
    torch.testing.assert_close(ablation_scores(adapter, preps, zero, variants=3), naive, **TOL)
    mean = Removal("mean", "instruction", head_means(adapter, preps, "instruction"))
    torch.testing.assert_close(ablation_scores(adapter, preps, mean, variants=adapter.parts.n_heads),
                               ablation_scores(adapter, preps, mean, fast=False), **TOL)
    # at the last position only: a suffix sweep of one position (stacked by memory, and 3 per pass)
    last = Removal("zero", "last")
    naive = ablation_scores(adapter, preps, last, fast=False)
    assert naive.nan_to_num().abs().max() > 0
    torch.testing.assert_close(ablation_scores(adapter, preps, last), naive, **TOL)
    torch.testing.assert_close(ablation_scores(adapter, preps, last, variants=3), naive, **TOL)


def _image_rows(batch):
    image = batch.group_mask("image")
    return [(int(m.nonzero()[0]), int(m.nonzero()[-1])) for m in image]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_suffix_sweep_equals_full_forwards_and_never_starts_inside_a_bidirectional_image(tiny, family):
    """Edits from the middle of the first row's image on: causal families recompute from there; Gemma 3,
    whose image positions see later ones in the same image, moves the start back to the image's first
    position. Either way every variant equals its full forward, also when carried in groups of 2."""
    adapter, preps = tiny(family)
    batch, n_rows = preps[0].batch, len(preps[0].batch)
    n_tok = batch.inputs["input_ids"].shape[1]
    (first, end), *_ = _image_rows(batch)
    middle = (first + end) // 2
    touched = (torch.arange(n_tok) >= middle).expand(n_rows, n_tok)
    run = PrefixRun(adapter, batch)
    start = run.start_for(touched)
    heads = list(at(adapter, (0, 0), (1, 1), (0, 1)))
    cut = touched[:, start:]

    def intervene(js):
        return edit_heads(adapter, [e for v, j in enumerate(js) for e in scale_heads([heads[j]], 0.0, variant_rows(n_rows, len(js), v, cut))])

    if whole_passes(adapter):
        # Gemma 4's layers pass keys and values along the whole sequence: no suffix; whole passes resumed
        # at each variant's first layer, stacked, each with its own copy of that state, equal full forwards
        assert start == 0
        out = run.sweep([l for l, _ in heads], [0] * len(heads), intervene, per_pass=2)
        for j, head in enumerate(heads):
            with edit_heads(adapter, scale_heads([head], 0.0, positions=touched)):
                torch.testing.assert_close(out[j], adapter.last_logits(batch), **TOL)
        # the edited passes rewrote the keys and values layers 0 and 1 hand on, in copies: a pass resumed
        # at layer 2, which reads them, still gives the plain logits, unstacked and stacked
        layer, hidden = list(run.states(3))[2]
        for n_variants in (1, 2):
            torch.testing.assert_close(run.resume(layer, hidden, n_variants), run.logits.repeat(n_variants, 1), **TOL)
        return
    if adapter.image_sees_ahead:  # Gemma 3, Molmo 2
        assert start <= min(f for f, _ in _image_rows(batch)) < middle
    else:
        assert start == middle

    for per_pass, group_size in ((None, None), (2, 2)):
        done = []
        out = run.suffix_sweep([l for l, _ in heads], start, intervene, per_pass, done.append, group_size)
        assert out.shape == (len(heads), n_rows, run.logits.shape[1]) and sum(done) == len(heads)
        for j, head in enumerate(heads):
            with edit_heads(adapter, scale_heads([head], 0.0, positions=touched)):
                torch.testing.assert_close(out[j], adapter.last_logits(batch), **TOL)
    assert not torch.allclose(out[0], run.logits)
    with pytest.raises(ValueError, match="suffix starts"):
        run.suffix_sweep([0], 0, intervene)


def test_a_suffix_start_never_passes_the_last_position(tiny):
    adapter, preps = tiny("llava")
    batch = preps[0].batch
    run = PrefixRun(adapter, batch)
    nothing = torch.zeros(batch.inputs["input_ids"].shape, dtype=torch.bool)
    assert run.start_for(nothing) == min(batch.last)
    assert run.start_for(batch.group_mask("last")) == min(batch.last)


# ------------------------------------------------------------------------------------ last-position sweeps
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_last_position_sweep_equals_full_forwards_from_a_walk_or_from_the_recorded_pass(tiny, family, impl):
    """Heads removed and amplified at the final position, as query columns of one pass per layer: each
    column equals a full forward with that edit, whether the keys and values come from a plain walk or
    were kept by the recorded pass (also one recorded with its autograd graph), columns all in one pass
    or 2 at a time."""
    adapter, preps = tiny(family, impl)
    batch, n_rows = preps[0].batch, len(preps[0].batch)
    last = batch.group_mask("last")
    edits = [(at(adapter, (0, 0)), 0.0), (at(adapter, (-1, 1)), 0.0), (at(adapter, (0, 1), (1, 0)), 3.0), (at(adapter, (1, 1)), 0.0)]
    expected = []
    for heads, scale in edits:
        with edit_heads(adapter, scale_heads(heads, scale, positions=last)):
            expected.append(adapter.last_logits(batch))

    def intervene(js):
        return edit_heads(adapter, [e for v, j in enumerate(js) for e in scale_heads(edits[j][0], edits[j][1], variant_columns(len(js), v, last[:, -1:]))])

    plain = adapter.last_logits(batch)
    if whole_passes(adapter):  # state passed along the whole sequence: no final position alone
        with pytest.raises(ValueError, match="no earlier position sees"):
            PrefixRun(adapter, batch).last_sweep([0], intervene)
        return
    for run in (PrefixRun(adapter, batch), PrefixRun(adapter, batch, keep_final=True), PrefixRun(adapter, batch, keep_final=True, grad=True)):
        torch.testing.assert_close(run.logits, plain, **TOL)
        assert run.last_is_final
        for per_pass in (None, 2):
            done = []
            out = run.last_sweep([min(l for l, _ in heads) for heads, _ in edits], intervene, per_pass, done.append)
            assert out.shape == (len(edits), n_rows, plain.shape[1]) and sum(done) == len(edits)
            for j in range(len(edits)):
                torch.testing.assert_close(out[j], expected[j], **TOL)
    assert not torch.allclose(out[0], plain)
    with pytest.raises(ValueError, match="at least one variant"):
        run.last_sweep([], intervene)


def test_variant_columns_selects_one_block_and_columns_are_bounded():
    where = torch.tensor([[True], [False]])
    assert variant_columns(3, 1, where).tolist() == [[False, True, False], [False, False, False]]
    adapter = load_adapter("tiny:llava")
    assert 1 <= max_columns(adapter, 50) <= 50


def test_right_padded_rows_fall_back_to_the_suffix_sweep():
    """With right padding the rows' last positions differ: no last-position sweep, the same numbers."""
    adapter = load_adapter("tiny:llava", padding_side="right")
    preps = prepare(adapter, render_all(conflict_items(3), CONFLICT_CONDITIONS), 3)
    run = PrefixRun(adapter, preps[0].batch)
    assert len(set(preps[0].batch.last)) > 1 and not run.last_is_final
    with pytest.raises(ValueError, match="left padding"):
        run.last_sweep([0], lambda js: edit_heads(adapter, []))
    last = Removal("zero", "last")
    torch.testing.assert_close(ablation_scores(adapter, preps, last), ablation_scores(adapter, preps, last, fast=False), **TOL)
    torch.testing.assert_close(hybrid_scores(adapter, preps, Removal("zero", "all")),
                               ablation_scores(adapter, preps, last, fast=False) + attribution_scores(adapter, preps, Removal("zero", "all"))
                               - attribution_scores(adapter, preps, last), **TOL)


# ------------------------------------------------------------------------------------ hybrid ranking
@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_scores_are_the_exact_last_position_drop_plus_attribution_elsewhere(tiny, family):
    adapter, preps = tiny(family)
    everywhere, last = Removal("zero", "all"), Removal("zero", "last")
    exact_last = ablation_scores(adapter, preps, last, fast=False)
    rest = attribution_scores(adapter, preps, everywhere) - attribution_scores(adapter, preps, last)
    hybrid = hybrid_scores(adapter, preps, everywhere)
    torch.testing.assert_close(hybrid, exact_last + rest, **TOL)
    for scores in (hybrid, rest):  # NaN exactly in the layers without heads (Qwen3.5's linear attention)
        assert scores.isnan().any(2).any(0).tolist() == [l in adapter.parts.linear for l in range(adapter.parts.n_layers)]
    assert not torch.allclose(hybrid, attribution_scores(adapter, preps, everywhere), equal_nan=True)
    torch.testing.assert_close(method_scores(adapter, preps, "hybrid", last), exact_last, **TOL)
    means = head_means(adapter, preps, "instruction")
    instruction = Removal("mean", "instruction", means)
    torch.testing.assert_close(hybrid_scores(adapter, preps, instruction), attribution_scores(adapter, preps, instruction), **TOL)


def test_edited_log_odds_reuses_a_given_recorded_pass_in_a_last_position_sweep(tiny, monkeypatch):
    """Handed a run that kept its keys and values, edits at `last` take query columns and run no model
    forward pass at all (no recording, no walk), with the same numbers as a fresh run."""
    adapter, preps = tiny("llava")
    run = PrefixRun(adapter, preps[0].batch, keep_final=True)
    edits = [(((0, 0),), 0.0), (((1, 1),), 2.0)]
    sweeps, forwards = [], []
    real = PrefixRun.last_sweep
    monkeypatch.setattr(PrefixRun, "last_sweep", lambda self, *a, **k: sweeps.append(1) or real(self, *a, **k))
    fresh = edited_log_odds(adapter, preps[0], edits, Removal("zero", "last"))
    handle = adapter.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        given = edited_log_odds(adapter, preps[0], edits, Removal("zero", "last"), run=run)
    finally:
        handle.remove()
    assert len(sweeps) == 2 and not forwards
    for a, b in zip(fresh, given):
        torch.testing.assert_close(a, b, **TOL)


def test_batched_head_scan_reports_the_same_progress(tiny):
    adapter, preps = tiny("llava")
    steps = {True: [], False: []}
    for fast in steps:
        ablation_scores(adapter, preps, Removal("zero", "last"), on_step=steps[fast].append, fast=fast)
    n_samples = sum(len(p.batch) for p in preps)
    total = n_samples * passes_per_sample("ablation", len(adapter.parts.heads()))
    assert sum(steps[True]) == sum(steps[False]) == total


# ------------------------------------------------------------------------------------ knockout sweep
def _sweep_keys(rows):
    return [(r["item_id"], r["setting"], r["edge"], r["center"]) for r in rows]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_knockout_sweep_equals_one_forward_per_window(tiny, family, monkeypatch):
    """Edges into `last` as query columns, the others as stacked suffixes, 4 variants per pass either way."""
    adapter, _ = tiny(family)
    samples = render_all(conflict_items(3), [Condition.TEXT_FOLLOWING, Condition.IMAGE_ONLY])  # image_only: empty edges
    columns = []
    real = PrefixRun.last_sweep
    monkeypatch.setattr(PrefixRun, "last_sweep", lambda self, first, *a, **k: columns.append(len(first)) or real(self, first, *a, **k))
    into_last = sum(dst == "last" for _, dst in STUDY_EDGES[:5])
    assert 0 < into_last < 5
    for window in (1, 3):  # 1: windows start at every layer; 3: one start for all (stacked edges and windows)
        plan = KnockoutPlan(edges=STUDY_EDGES[:5], window=window, n_layers=adapter.parts.n_layers)
        naive = knockout_rows(adapter, samples, plan, batch_size=3, fast=False)
        columns.clear()
        fast = knockout_rows(adapter, samples, plan, batch_size=3, variants=4)
        # every (edge into last, distinct window) of the conflict batch: windows clipped to the same layers run once
        if whole_passes(adapter):  # no final position alone (Gemma 4, Qwen3.5): every knockout resumes whole passes
            assert not columns
        else:
            assert max(columns) == into_last * len({tuple(layers) for _, layers in plan.windows()})
        assert _sweep_keys(fast) == _sweep_keys(naive)
        assert any(r["delta"] != 0 for r in naive)
        for a, b in zip(fast, naive):
            assert a["log_odds_before"] == pytest.approx(b["log_odds_before"], abs=1e-5)
            assert a["log_odds_after"] == pytest.approx(b["log_odds_after"], abs=1e-5)
            assert a["follows_after"] == b["follows_after"]


def test_cumulative_knockout_spans_fast_equal_naive_and_agree_where_they_coincide(tiny):
    """Cumulative spans from the recorded pass equal one forward per span; spans blocking the same layers
    (from 0 and until the last; a 1-layer window and from/until at the ends) give the same numbers."""
    adapter, _ = tiny("llava")
    n_layers = adapter.parts.n_layers
    samples = render_all(conflict_items(3), [Condition.TEXT_FOLLOWING, Condition.VISION_FOLLOWING])
    plan = KnockoutPlan(edges=(("context", "instruction"), ("image", "last")), window=1, n_layers=n_layers, cumulative=True)
    assert n_layers >= 2 and plan.n_passes_per_batch == 2 * (3 * n_layers - 3)  # windows, from, until: shared layer sets once
    naive = knockout_rows(adapter, samples, plan, batch_size=3, fast=False)
    fast = knockout_rows(adapter, samples, plan, batch_size=3)
    key = lambda r: (r["item_id"], r["setting"], r["edge"], r["span"], r["center"])  # noqa: E731
    assert [key(r) for r in fast] == [key(r) for r in naive]
    assert [r["log_odds_after"] for r in fast] == pytest.approx([r["log_odds_after"] for r in naive], abs=1e-5)
    at = {key(r): r["log_odds_after"] for r in fast}
    for item, setting, edge, _, _ in {k for k in at}:
        same = lambda a, b: at[(item, setting, edge, *a)] == at[(item, setting, edge, *b)]  # noqa: E731
        assert same(("from", 0), ("until", n_layers - 1))
        assert same(("window", n_layers - 1), ("from", n_layers - 1)) and same(("window", 0), ("until", 0))
    # blocking more layers of image->last moves the vision-following log-odds at least somewhere
    assert any(r["delta"] != 0 for r in fast if r["span"] == "from" and r["edge"] == "image->last")


def test_knockouts_branch_off_the_widest_one_they_agree_with():
    """Every layer up to l blocked agrees with every layer blocked until layer l + 1; a window from a to b
    agrees with the block from a onwards until b + 1; knockouts of other edges, or that would save
    nothing, branch off nothing."""
    edge, other = ("image", "instruction"), ("context", "instruction")
    todo = [(edge, 0, [0, 1, 2, 3]), (edge, 1, [1, 2, 3]), (edge, 0, [0, 1]), (edge, 1, [1, 2]), (edge, 2, [2, 3]),
            (edge, 0, [0]), (other, 0, [0, 1]), (edge, 3, [3])]
    assert knockout_branches(todo) == [None, None, (0, 2), (1, 3), None, (0, 1), None, None]


@pytest.mark.parametrize("family", FAMILIES)
def test_knockouts_branching_off_another_give_the_same_bits(tiny, family, monkeypatch):
    """Cumulative spans and windows that start from the state of the knockout they agree with (the
    suffix sweep's branches) give the numbers of each run from its own first layer: the same rows,
    computed in other stacks (bit for bit on the organism, measured; within 1e-6 on the tiny models,
    whose small products take other kernels for other stack sizes)."""
    from mllm_arb.pipeline.analyze import flow

    adapter, _ = tiny(family)
    samples = render_all(conflict_items(3), [Condition.TEXT_FOLLOWING, Condition.VISION_FOLLOWING])
    plan = KnockoutPlan(edges=(("context", "instruction"), ("image", "context")), window=1,
                        n_layers=adapter.parts.n_layers, cumulative=True)
    calls = []
    real = PrefixRun.suffix_sweep
    monkeypatch.setattr(PrefixRun, "suffix_sweep", lambda self, *a, **k: calls.append(k["branches"]) or real(self, *a, **k))
    branched = knockout_rows(adapter, samples, plan, batch_size=3)
    if whole_passes(adapter):  # no suffixes to branch (Gemma 4, Qwen3.5)
        assert not calls
        return
    assert calls and all(sum(b is not None for b in branches) >= adapter.parts.n_layers - 1 for branches in calls)
    monkeypatch.setattr(flow, "knockout_branches", lambda todo: None)
    alone = knockout_rows(adapter, samples, plan, batch_size=3)
    assert [{**r, "log_odds_after": 0, "delta": 0} for r in branched] == [{**r, "log_odds_after": 0, "delta": 0} for r in alone]
    assert [r["log_odds_after"] for r in branched] == pytest.approx([r["log_odds_after"] for r in alone], abs=1e-6, rel=0)
    assert any(r["delta"] != 0 for r in alone)


def test_branches_without_room_beside_their_knockout_run_from_their_own_first_layer(tiny, monkeypatch):
    """Where memory leaves room for one suffix a group, a knockout's branches do not crowd in beside it:
    they run later, from their own first layer, with the same numbers."""
    from mllm_arb.interventions import prefix
    from mllm_arb.pipeline.analyze import flow

    adapter, _ = tiny("llava")
    samples = render_all(conflict_items(3), [Condition.TEXT_FOLLOWING])
    plan = KnockoutPlan(edges=(("context", "instruction"),), window=1, n_layers=adapter.parts.n_layers, cumulative=True)
    expected = knockout_rows(adapter, samples, plan, batch_size=3)
    groups = []
    real = PrefixRun._sweep_group
    monkeypatch.setattr(PrefixRun, "_sweep_group", lambda self, group, *a: groups.append(len(group)) or real(self, group, *a))
    monkeypatch.setattr(prefix, "_plain_pass_size", lambda adapter, n_tokens: 0)  # room for one suffix a group
    squeezed = knockout_rows(adapter, samples, plan, batch_size=3)
    assert groups and set(groups) == {1}
    assert [r["log_odds_after"] for r in squeezed] == pytest.approx([r["log_odds_after"] for r in expected], abs=1e-6, rel=0)


def test_a_variant_cannot_branch_off_one_that_branches_or_starts_elsewhere(tiny):
    adapter, preps = tiny("llava")
    run = PrefixRun(adapter, preps[0].batch)
    start = int(run.last.min()) - 2
    for branches, starts in (([None, (0, 1), (1, 1)], [start] * 3), ([None, (0, 1)], [start, start - 1]), ([(0, 1)], [start])):
        with pytest.raises(ValueError, match="cannot branch"):
            run.suffix_sweep([0] * len(starts), starts, lambda js: nullcontext(), branches=branches)


@pytest.mark.parametrize("family", ["gemma3", "qwen2_vl"])
def test_batched_knockout_sweep_under_eager_attention(tiny, family):
    adapter, _ = tiny(family, "eager")
    samples = render_all(conflict_items(3), [Condition.TEXT_FOLLOWING])
    plan = KnockoutPlan(edges=STUDY_EDGES, window=1, n_layers=adapter.parts.n_layers)  # edges into last: columns
    naive = knockout_rows(adapter, samples, plan, batch_size=3, fast=False)
    fast = knockout_rows(adapter, samples, plan, batch_size=3)
    assert [r["log_odds_after"] for r in fast] == pytest.approx([r["log_odds_after"] for r in naive], abs=1e-5)


def test_per_row_knockout_layers_match_separate_knockouts(tiny):
    adapter, preps = tiny("llava")
    batch = preps[0].batch
    edge = [("context", "last")]
    with knock_out(adapter, batch, edge, [0]):
        first = adapter.last_logits(batch)
    with knock_out(adapter, batch, edge, [1]):
        second = adapter.last_logits(batch)
    block = knockout_mask(batch, edge)
    run = PrefixRun(adapter, batch)
    with knock_out_rows(adapter, torch.cat([block, block]), [{0}] * len(batch) + [{1}] * len(batch)):
        both = run.resume(0, next(run.states())[1], 2)
    torch.testing.assert_close(both, torch.cat([first, second]), **TOL)
    with pytest.raises(ValueError, match="per-row layer sets"):
        with knock_out_rows(adapter, block, [{0}]):
            pass


# ------------------------------------------------------------------------------------ blocking and amplification
@pytest.mark.parametrize("family", FAMILIES)
def test_blocking_and_amplification_arms_equal_one_forward_per_arm(tiny, family):
    """Every batch's arms from one recorded pass (head sets spanning layers, an empty set, α > 1), at
    every position, at the last one (a suffix sweep) and mean-ablated at the instruction."""
    adapter, preps = tiny(family)
    top = Arm("headline", "top", at(adapter, (1, 0), (0, 1)), 0.0, controls=True)
    arms = [top, Arm("headline", "random", at(adapter, (1, 1)), 0.0, seed=0), Arm("headline", "none", (), 0.0),
            Arm("amplify", "top", top.heads, 3.0, controls=True),
            Arm("dose", "top", at(adapter, (0, 1), (1, 0)), 0.0, k=0.05)]  # the top set again, in another order
    settings, controls = preps[:1], preps[1:]
    base = {id(p): log_odds_under(adapter, p) for p in preps}
    for removal in (Removal("zero", "all"), Removal("zero", "last"),
                    Removal("mean", "instruction", head_means(adapter, preps, "instruction"))):
        steps = {True: [], False: []}
        rows = {fast: run_arms(adapter, arms, settings, controls, base, removal, steps[fast].append, fast) for fast in steps}
        assert [r["heads"] for r in rows[True]] == [r["heads"] for r in rows[False]] and sum(steps[True]) == sum(steps[False])
        assert any(r["log_odds_after"] != r["log_odds_before"] for r in rows[False])
        for a, b in zip(rows[True], rows[False]):
            assert a["log_odds_after"] == pytest.approx(b["log_odds_after"], abs=1e-5)
            assert a["follows_after"] == b["follows_after"]


# ------------------------------------------------------------------------------------ paired batches
def _settings_pair(preps):
    chosen = [p for p in preps if p.samples[0].condition in (Condition.TEXT_FOLLOWING, Condition.VISION_FOLLOWING)]
    assert [p.samples[0].condition for p in chosen] == [Condition.TEXT_FOLLOWING, Condition.VISION_FOLLOWING]
    return chosen


@pytest.mark.parametrize("family", FAMILIES)
def test_paired_batches_of_the_same_items_equal_each_batch_alone_and_one_forward_per_edit(tiny, family):
    """Text and vision following of the same items share the image and the context: run together, the
    second batch recomputing only what follows the shared prefix with the first's keys and values under the
    same edit, each batch gets its own numbers: those of `edited_log_odds` alone, and of one full forward
    pass per edit (zero and mean ablation, amplification, head sets spanning layers, a repeated edit)."""
    adapter, preps = tiny(family)
    tf, vf = _settings_pair(preps)
    run, run_other = PrefixRun(adapter, tf.batch), PrefixRun(adapter, vf.batch)
    if whole_passes(adapter):  # no suffix, so nothing to pair (Gemma 4, Qwen3.5)
        assert run.shared_prefix(run_other) is None
        return
    start, offsets = run.shared_prefix(run_other)
    pads = vf.batch.inputs["input_ids"].shape[1] - vf.batch.inputs["attention_mask"].sum(1)
    assert int(pads.max()) < start < run_other.n_tokens and offsets.shape == (len(vf.batch),)
    last = adapter.parts.n_layers - 1
    edits = [(((0, 0),), 0.0), (((last, 1),), 0.0), (((0, 1), (last, 0)), 2.5), (((1, 1), (0, 0)), 0.0), (((0, 0),), 0.0)]
    hooks = n_hooks(adapter.model)
    for removal in (Removal("zero", "all"), Removal("mean", "all", head_means(adapter, preps, "all"))):
        paired = paired_log_odds(adapter, tf, vf, edits, removal)
        assert n_hooks(adapter.model) == hooks
        for prep, (base, after) in zip((tf, vf), paired):
            alone_base, alone = edited_log_odds(adapter, prep, edits, removal)
            torch.testing.assert_close(base, alone_base, **TOL)
            torch.testing.assert_close(after, alone, **TOL)
            for j, (heads, scale) in enumerate(edits):
                torch.testing.assert_close(after[j], log_odds_under(adapter, prep, removal.edits(heads, prep.batch, scale)), **TOL)
            assert not torch.allclose(after[0], base) and torch.equal(after[4], after[0])


def _rows_round_alone(adapter, n_rows: int, n_tokens: int, start: int) -> bool:
    """Whether this machine's matrix products give positions `start..` the bits alone that they get
    among all positions (the linear layers of a pair's suffix run on those rows alone)."""
    layer = adapter.parts.o_proj(0)
    x = torch.randn(n_rows, n_tokens, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(layer(x)[:, start:], layer(x[:, start:]))


@pytest.mark.parametrize("family", FAMILIES)
def test_paired_batches_give_each_batch_the_bits_it_gets_alone(tiny, family):
    """The second batch of a pair runs its attention from `query_start`, which the kernel blocks as it
    blocks the whole sequence: its numbers are the batch's own bit for bit, for head sets spanning
    layers and scaled ones, stacked (where the machine's matrix products round a suffix of rows as
    they round them among all rows, which is checked first; otherwise within float rounding)."""
    adapter, preps = tiny(family)
    tf, vf = _settings_pair(preps)
    run, run_other = PrefixRun(adapter, tf.batch), PrefixRun(adapter, vf.batch)
    if whole_passes(adapter):  # nothing to pair (above)
        return
    start, _ = run.shared_prefix(run_other)
    first = run_other.query_start(start)
    assert 0 <= first <= start and run_other.query_start(start) == first  # measured once
    last = adapter.parts.n_layers - 1
    edits = [(((0, 0),), 0.0), (((last, 1),), 0.0), (((0, 1), (last, 0)), 2.5), (((1, 1),), 8.0)]
    paired = paired_log_odds(adapter, tf, vf, edits, Removal("zero", "all"))
    exact = _rows_round_alone(adapter, len(vf.batch), run_other.n_tokens, start)
    for prep, (base, after) in zip((tf, vf), paired):
        alone_base, alone = edited_log_odds(adapter, prep, edits, Removal("zero", "all"))
        tolerance = dict(rtol=0, atol=0) if exact else TOL
        torch.testing.assert_close(base, alone_base, **tolerance)
        torch.testing.assert_close(after, alone, **tolerance)


def test_batches_that_do_not_share_a_prefix_are_not_paired(tiny):
    """Other items, another image, or a control without the conflict's context: no pairing, and
    `paired_log_odds` then runs each batch alone."""
    adapter, preps = tiny("llava")
    tf, vf = _settings_pair(preps)
    runs = {id(p): PrefixRun(adapter, p.batch) for p in (tf, vf)}
    text_only = prepare(adapter, render_all(conflict_items(3), [Condition.TEXT_ONLY]), 3)[0]
    assert runs[id(tf)].shared_prefix(PrefixRun(adapter, text_only.batch)) is None  # no image
    assert runs[id(tf)].shared_prefix(runs[id(vf)]) is not None
    other_items = prepare(adapter, [s for s in render_all(conflict_items(4)[1:], [Condition.VISION_FOLLOWING])], 3)[0]
    assert runs[id(tf)].shared_prefix(PrefixRun(adapter, other_items.batch)) is None
    recoloured = prepare(adapter, vf.samples, 3)[0]
    recoloured.batch.inputs["pixel_values"] = recoloured.batch.inputs["pixel_values"] + 0.5
    assert runs[id(tf)].shared_prefix(PrefixRun(adapter, recoloured.batch)) is None
    edits = [(((0, 0),), 0.0)]
    (_, a), (_, b) = paired_log_odds(adapter, tf, text_only, edits, Removal("zero", "all"))
    torch.testing.assert_close(b, edited_log_odds(adapter, text_only, edits, Removal("zero", "all"))[1], rtol=0, atol=0)


def test_paired_batches_hand_out_the_partners_result_once_with_its_progress(tiny, monkeypatch):
    """`PairedBatches`: the first batch of a pair runs both (one paired sweep), the second gets its result
    without a pass and reports its own progress then; asked for other edits, a batch runs alone."""
    adapter, preps = tiny("llava")
    tf, vf = _settings_pair(preps)
    sweeps = []
    original = PrefixRun.paired_sweep
    monkeypatch.setattr(PrefixRun, "paired_sweep", lambda self, *a, **k: sweeps.append(1) or original(self, *a, **k))
    edits = [(((0, 0),), 0.0), (((1, 1),), 0.0)]
    removal = Removal("zero", "all")
    pairs = PairedBatches(preps)
    steps = {"tf": [], "vf": []}
    first = pairs.edited(adapter, tf, edits, removal, steps["tf"].append)
    second = pairs.edited(adapter, vf, edits, removal, steps["vf"].append)
    assert len(sweeps) == 1 and sum(steps["tf"]) == sum(steps["vf"]) == len(edits) * len(tf.batch)
    torch.testing.assert_close(second[1], edited_log_odds(adapter, vf, edits, removal)[1], **TOL)
    torch.testing.assert_close(first[1], edited_log_odds(adapter, tf, edits, removal)[1], **TOL)
    again = pairs.edited(adapter, vf, edits[:1], removal)  # nothing held for it any more: alone
    assert len(sweeps) == 1 and again[1].shape == (1, len(vf.batch))
    assert PairedBatches(preps, enabled=False).partner == {}


def test_a_repeated_arm_costs_no_pass(tiny):
    """The same heads at the same scale (the dose-response's arm at the headline's k) are computed once:
    the decoder layers run over as many rows as without the repeat, and the repeat's rows are the first's."""
    adapter, preps = tiny("llava")
    arms = [Arm("headline", "top", ((1, 0), (0, 1)), 0.0), Arm("amplify", "top", ((1, 0), (0, 1)), 3.0)]
    repeat = Arm("dose", "top", ((0, 1), (1, 0)), 0.0, k=0.05)
    base = {id(p): log_odds_under(adapter, p) for p in preps[:1]}
    calls = []
    def rows_in(module, args, kwargs):  # rows (stacked variants included) a decoder layer runs over
        calls.append((args[0] if args else kwargs["hidden_states"]).shape[0])

    hooks = [layer.register_forward_pre_hook(rows_in, with_kwargs=True) for layer in adapter.parts.layers]
    try:
        counts, rows = [], []
        for chosen in (arms, [*arms, repeat]):
            calls.clear()
            rows.append(run_arms(adapter, chosen, preps[:1], [], base, Removal("zero", "all")))
            counts.append(sum(calls))
    finally:
        for h in hooks:
            h.remove()
    assert counts[0] == counts[1]
    n = len(preps[0].batch)
    assert [r["log_odds_after"] for r in rows[1][-n:]] == [r["log_odds_after"] for r in rows[1][:n]]


def test_arms_run_no_pass_where_none_applies(tiny):
    """A controls batch that no arm runs on costs nothing; the straightforward loop runs one pass per arm."""
    adapter, preps = tiny("llava")
    arms = [Arm("headline", "random", ((1, 1),), 0.0, seed=s) for s in range(3)]  # settings only
    base = {id(p): log_odds_under(adapter, p) for p in preps}
    passes = []
    handle = adapter.model.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        for fast, expected in ((True, 1), (False, len(arms))):
            passes.clear()
            run_arms(adapter, arms, preps[:1], preps[1:], base, Removal("zero", "all"), fast=fast)
            assert len(passes) == expected
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------ verified ranking
def test_verified_scores_are_exact_on_the_candidates_and_hybrid_elsewhere(tiny):
    adapter, preps = tiny("qwen2_vl")
    removal = Removal("zero", "all")
    parts = adapter.parts
    estimate = hybrid_scores(adapter, preps, removal)
    exact = ablation_scores(adapter, preps, removal)
    verified = method_scores(adapter, preps, "verified", removal)
    candidates = verification_candidates(preps, estimate, n_verified(len(parts.heads())))
    assert candidates and len(candidates) <= parts.n_layers * parts.n_heads
    chosen = torch.zeros(parts.n_layers, parts.n_heads, dtype=torch.bool)
    for l, h in candidates:
        chosen[l, h] = True
    torch.testing.assert_close(verified[:, chosen], exact[:, chosen], **TOL)
    torch.testing.assert_close(verified[:, ~chosen], estimate[:, ~chosen], **TOL)
    # a small fraction verifies fewer heads; a fraction of 1 is the exact scan itself
    torch.testing.assert_close(verified_scores(adapter, preps, removal, fraction=1.0), exact, **TOL)
    # at the last position the hybrid estimate is already the exact scan: no second one
    last = Removal("zero", "last")
    steps = []
    torch.testing.assert_close(verified_scores(adapter, preps, last, steps.append), ablation_scores(adapter, preps, last, fast=False), **TOL)
    assert sum(steps) == sum(len(p.batch) for p in preps) * passes_per_sample("verified", len(parts.heads()))
