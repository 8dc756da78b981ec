"""Ranking attention heads by their causal role in arbitration (docs/method.md §5).

Five scores per sample and head, all oriented the same way (positive: the head pushes toward the
following answer, so removing it lowers the following log-odds):

- `ablation`: exact. Remove the head (zero or mean, at the chosen positions) and measure the drop in
  following log-odds. By default one plain pass per batch is recorded and each head's removal resumes it
  at the head's layer (`PrefixRun`), heads stacked in one pass as memory allows; `fast=False` is the
  straightforward loop of one full forward pass per head and batch (same numbers, for checking).
- `attribution`: attribution patching. One forward and one backward pass per batch; the drop is
  predicted to first order as `(activation - replacement) · gradient`, summed over the positions.
- `hybrid`: exact where the answer is read out, first-order elsewhere: each head's removal at the last
  position measured (all heads in one last-position sweep, resumed from the attribution pass itself),
  plus attribution patching's estimate for its other positions.
- `verified`: `hybrid` for every head, then exact ablation of the top candidates it proposes
  (`VERIFY_FRACTION` of the heads, by each setting's and the pooled score), whose scores replace theirs.
- `dla`: direct logit attribution. What the head writes at the last position, read straight through
  the final norm and unembedding (linearised at the actual final residual), onto following −
  competitor. It ignores every path through later layers, so it ranks "writer" heads only.

Scores are averaged per setting and pooled (mean of the settings); heads are ranked on the pooled
score (or one setting's), highest first. A layer without attention heads (linear attention: Qwen3.5)
is never scored: its entries of every `[N, L, H]` score tensor and `[L][H]` matrix are NaN, and the
ranking leaves it out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace

import numpy as np
import torch

from ...core.heads_file import attention_heads
from ...core.records import Sample
from ...core.scoring import AnswerIds, answer_ids, binary_scores
from ...core.scoring import batches
from ...interventions.heads import HeadEdit, edit_heads, record_heads, scale_heads
from ...interventions.lens import lens_logits
from ...interventions.prefix import PrefixRun, variant_columns, variant_rows
from ...models.adapter import Batch, ModelAdapter

METHODS = ("ablation", "attribution", "hybrid", "verified", "dla")
#: share of all heads that `verified` checks by exact ablation (3× the default top_k of 5%)
VERIFY_FRACTION = 0.15
ABLATION_MODES = ("zero", "mean")
POSITIONS = ("all", "last", "instruction")

Head = tuple[int, int]
OnStep = Callable[[int], None] | None


@dataclass
class Prepared:
    """A batch built once and reused by every pass over it (the processor is the slow part on CPU)."""

    batch: Batch
    ids: list[AnswerIds]

    @property
    def samples(self) -> list[Sample]:
        return self.batch.samples


def prepare(adapter: ModelAdapter, samples: Sequence[Sample], batch_size: int) -> list[Prepared]:
    out = []
    for chunk in batches(samples, batch_size):
        batch = adapter.build_batch(chunk)
        out.append(Prepared(batch, [answer_ids(adapter.tokenizer, s) for s in batch.samples]))
    return out


def by_head(values: torch.Tensor, parts) -> torch.Tensor:
    """`[B, L, H]` from `[B, len(parts.heads())]` values in `parts.heads()` order, NaN in the layers without heads."""
    if not parts.linear:
        return values.reshape(values.shape[0], parts.n_layers, parts.n_heads)
    out = values.new_full((values.shape[0], parts.n_layers, parts.n_heads), float("nan"))
    out[:, list(parts.head_layers)] = values.reshape(values.shape[0], len(parts.head_layers), parts.n_heads)
    return out


def unscored_layers(matrix) -> set[int]:
    """The layers of an `[L][H]` score matrix (or `[N, L, H]` tensor) without heads: every entry NaN."""
    values = torch.as_tensor(matrix, dtype=torch.float64)
    values = values.reshape(-1, *values.shape[-2:]).transpose(0, 1).flatten(1)  # [L, N * H]
    return {l for l in range(values.shape[0]) if bool(torch.isnan(values[l]).all())}


def position_mask(batch: Batch, positions: str) -> torch.Tensor:
    """`[B, T]` positions a removal acts on; padding is never one of them. A row without the group
    (e.g. `instruction` in a control that has no instruction) is left untouched."""
    if positions == "all":
        ids = batch.inputs["input_ids"]
        return batch.inputs.get("attention_mask", torch.ones_like(ids)).to(torch.bool)
    if positions in ("last", "instruction"):
        return batch.group_mask(positions)
    raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, not {positions!r}")


@dataclass(frozen=True, eq=False)
class Removal:
    """How a head is removed (blocking) or scaled (amplification), and where."""

    mode: str = "zero"  # zero | mean
    positions: str = "all"  # all | last | instruction
    means: dict[Head, torch.Tensor] | None = None  # per-head mean output, for mode "mean"

    def edits(self, heads: Sequence[Head], batch: Batch, scale: float = 0.0) -> list[HeadEdit]:
        """Edits for one batch: scale 0 blocks (zero or mean), any other scale multiplies the output."""
        if not heads:
            return []
        where = position_mask(batch, self.positions)
        return [self.edit(head, where, scale) for head in heads]

    def edit(self, head: Head, where: torch.Tensor, scale: float = 0.0) -> HeadEdit:
        """The edit of one head at the positions `where` (`[rows, T]` bool)."""
        l, h = head
        if scale == 0 and self.mode == "mean":
            if self.means is None:
                raise ValueError("mean ablation needs per-head means (see head_means)")
            return HeadEdit(layer=l, head=h, scale=0.0, mean=self.means[(l, h)], positions=where)
        return scale_heads([head], scale, positions=where)[0]

    def replacement(self, layer: int, n_heads: int, like: torch.Tensor) -> torch.Tensor:
        """`[n_heads, head_dim]` what removal puts in place of each head of `layer`."""
        if self.mode == "mean":
            return torch.stack([self.means[(layer, h)] for h in range(n_heads)]).to(like)
        return torch.zeros(like.shape[-2:], dtype=like.dtype, device=like.device)


@torch.no_grad()
def head_means(adapter: ModelAdapter, preps: Sequence[Prepared], positions: str) -> dict[Head, torch.Tensor]:
    """Mean output of every head over the given positions of the (ranking-split) batches."""
    parts = adapter.parts
    sums = {l: torch.zeros(parts.n_heads, parts.head_dim(l), dtype=torch.float64) for l in parts.head_layers}
    count = 0
    for p in preps:
        mask = position_mask(p.batch, positions)
        with record_heads(adapter) as rec:
            adapter.model(**p.batch.inputs, use_cache=False)
        for layer, out in rec.items():
            sums[layer] += out[mask.to(out.device)].double().sum(0).cpu()
        count += int(mask.sum())
    if count == 0:
        raise ValueError(f"no {positions} positions in the ranking split to take head means over")
    means = {l: (layer_sums / count).to(adapter.model.dtype) for l, layer_sums in sums.items()}
    return {(l, h): means[l][h] for l, h in parts.heads()}


def log_odds_under(adapter: ModelAdapter, prep: Prepared, edits: Sequence[HeadEdit] = ()) -> torch.Tensor:
    """`[B]` following log-odds of one prepared batch with `edits` applied (none: the plain model)."""
    with ExitStack() as stack:
        if edits:
            stack.enter_context(edit_heads(adapter, edits))
        logits = adapter.last_logits(prep.batch)
    return binary_scores(logits, prep.ids)[0].cpu()


# ------------------------------------------------------------------------------------ the scores
@torch.no_grad()
def ablation_scores(
    adapter: ModelAdapter, preps: Sequence[Prepared], removal: Removal, on_step: OnStep = None,
    fast: bool = True, variants: int | None = None, pairs: PairedBatches | None = None,
) -> torch.Tensor:
    """`[N, L, H]` drop in following log-odds when each head alone is removed.

    `fast` resumes one recorded pass per batch at each head's layer, `variants` heads stacked per pass
    (default: as many as keep memory about a plain pass's, `max_variants`); `fast=False` runs one full
    forward pass per head and batch. `pairs`: batches of the same items that run together (`PairedBatches`).
    """
    parts = adapter.parts
    heads = parts.heads()
    out = []
    for p in preps:
        if fast:
            drops = exact_drops(adapter, p, removal, heads, on_step, variants, pairs)
        else:
            drops = naive_drops(adapter, p, removal, heads, on_step)
        out.append(by_head(drops, parts))
    return torch.cat(out)


def naive_drops(adapter: ModelAdapter, prep: Prepared, removal: Removal, heads: Sequence[Head], on_step: OnStep = None) -> torch.Tensor:
    """`[B, len(heads)]` drop in log-odds per removed head: one full forward pass per head."""
    base = log_odds_under(adapter, prep)
    out = torch.empty(len(prep.batch), len(heads))
    for j, head in enumerate(heads):
        out[:, j] = base - log_odds_under(adapter, prep, removal.edits([head], prep.batch))
        if on_step:
            on_step(len(prep.batch))
    return out


@torch.no_grad()
def exact_drops(
    adapter: ModelAdapter, prep: Prepared, removal: Removal, heads: Sequence[Head], on_step: OnStep = None, variants: int | None = None,
    pairs: PairedBatches | None = None,
) -> torch.Tensor:
    """`naive_drops` with prefix reuse (`edited_log_odds`, one head per edit; `pairs.edited` with `pairs`)."""
    base, after = edited_by(pairs)(adapter, prep, [((head,), 0.0) for head in heads], removal, on_step, variants)
    return (base[None] - after).T


#: a set of heads and the scale their outputs get (0: removed, as `Removal` says; α: amplified)
HeadSetEdit = tuple[Sequence[Head], float]


@torch.no_grad()
def edited_log_odds(
    adapter: ModelAdapter, prep: Prepared, edits: Sequence[HeadSetEdit], removal: Removal, on_step: OnStep = None,
    variants: int | None = None, run: PrefixRun | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(`[B]` plain, `[len(edits), B]` edited) following log-odds of one batch, each edit a head set
    removed or scaled at `removal`'s positions, from one recorded pass (`PrefixRun`; `run`: one already
    recorded over `prep`'s batch).

    An edit acts from its lowest layer on, so it resumes the recorded pass there (`PrefixRun.sweep`),
    `variants` edits stacked per pass (default: as memory allows). Edits at the last or the instruction
    positions only recompute the positions from there on (a suffix sweep; at the final position alone,
    edits stacked as query columns, `PrefixRun.last_sweep`). An empty head set is the
    plain pass. Equals `log_odds_under` with `removal.edits(heads, batch, scale)`, one pass per edit.
    """
    batch, n_rows = prep.batch, len(prep.batch)
    run = run or PrefixRun(adapter, batch)
    base = binary_scores(run.logits, prep.ids)[0].cpu()
    after = base.repeat(len(edits), 1)
    todo, copies = _distinct(edits)
    where = position_mask(batch, removal.positions)
    position = run.start_for(where)
    where = where[:, position:]

    in_columns = position == run.n_tokens - 1 and run.last_is_final  # a last-position sweep (`last_sweep`)
    if in_columns:
        intervene = _editing(adapter, removal, edits, todo, lambda n, v: variant_columns(n, v, where))
    else:
        intervene = _editing(adapter, removal, edits, todo, lambda n, v: variant_rows(n_rows, n, v, where))
    if on_step and len(todo) < len(edits):
        on_step(n_rows * (len(edits) - len(todo)))
    if not todo:
        return base, after
    done = (lambda k: on_step(n_rows * k)) if on_step else None
    first_layers = _first_layers(edits, todo)
    if in_columns:
        logits = run.last_sweep(first_layers, intervene, variants, done)
    else:
        logits = run.sweep(first_layers, [position] * len(todo), intervene, variants, done)
    _fill(after, logits, prep, todo, copies)
    return base, after


def _editing(adapter: ModelAdapter, removal: Removal, edits: Sequence[HeadSetEdit], todo: Sequence[int],
             place: Callable[[int, int], torch.Tensor]):
    """A sweep's `intervene(js)`: edit `todo[j]` for each j of `js` in block v of a stack of len(js), at the
    positions `place(len(js), v)` (rows of a stack, or query columns)."""
    def intervene(js: Sequence[int]):
        chosen = [edits[todo[j]] for j in js]
        return edit_heads(adapter, [removal.edit(h, place(len(js), v), scale) for v, (heads, scale) in enumerate(chosen) for h in heads])

    return intervene


def _first_layers(edits: Sequence[HeadSetEdit], todo: Sequence[int]) -> list[int]:
    """Where each edit to compute starts acting: its head set's lowest layer."""
    return [min(l for l, _ in edits[j][0]) for j in todo]


def _key(heads: Sequence[Head], scale: float) -> tuple:
    """What makes two edits the same: their heads in any order, and the scale."""
    return tuple(sorted(heads)), float(scale)


def _distinct(edits: Sequence[HeadSetEdit]) -> tuple[list[int], list[tuple[int, int]]]:
    """(the edits to compute, (j, source) pairs of edits to copy): an edit that repeats an earlier one (the
    same heads at the same scale: the dose-response's 5% arms are the headline's) is computed once.
    Empty head sets are the plain pass, neither."""
    first: dict[tuple, int] = {}
    todo, copies = [], []
    for j, (heads, scale) in enumerate(edits):
        if heads:
            key = _key(heads, scale)
            if key in first:
                copies.append((j, first[key]))
            else:
                first[key] = j
                todo.append(j)
    return todo, copies


def _fill(after: torch.Tensor, logits: torch.Tensor, prep: Prepared, todo: Sequence[int], copies) -> None:
    """Write the `[len(todo), B, vocab]` logits' log-odds into `after` (`[len(edits), B]`), and the copies."""
    log_odds = binary_scores(logits.flatten(0, 1), list(prep.ids) * len(todo))[0].cpu().view(len(todo), len(prep.batch))
    for v, j in enumerate(todo):
        after[j] = log_odds[v]
    for j, source in copies:
        after[j] = after[source]


def _edits_key(edits: Sequence[HeadSetEdit]) -> tuple:
    return tuple(_key(heads, scale) for heads, scale in edits)


@torch.no_grad()
def paired_log_odds(
    adapter: ModelAdapter, prep: Prepared, other: Prepared, edits: Sequence[HeadSetEdit], removal: Removal,
    on_step: OnStep = None, on_step_other: OnStep = None, variants: int | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """`edited_log_odds` of the same edits on two batches of the same items, `(plain, edited)` of each.

    Where `other` repeats `prep`'s rows up to a point (the same items under the other instruction: text
    and vision following share the image and the context) and the edits act at every position, both
    run in one `PrefixRun.paired_sweep`: `other` recomputes only its positions after the shared prefix,
    with the keys and values of `prep`'s rows under the same edit. Otherwise one after the other."""
    run, run_other = PrefixRun(adapter, prep.batch), PrefixRun(adapter, other.batch)
    shared = run.shared_prefix(run_other) if removal.positions == "all" else None
    if shared is None:
        return (edited_log_odds(adapter, prep, edits, removal, on_step, variants, run),
                edited_log_odds(adapter, other, edits, removal, on_step_other, variants, run_other))
    start, offsets = shared
    n_rows = len(prep.batch)
    results = []
    for p, r in ((prep, run), (other, run_other)):
        base = binary_scores(r.logits, p.ids)[0].cpu()
        results.append((base, base.repeat(len(edits), 1)))
    todo, copies = _distinct(edits)
    for step in (on_step, on_step_other):
        if step and len(todo) < len(edits):
            step(n_rows * (len(edits) - len(todo)))
    if not todo:
        return results[0], results[1]
    where = position_mask(prep.batch, "all")
    where_other = position_mask(other.batch, "all")[:, start:]

    def done(k: int) -> None:
        for step in (on_step, on_step_other):
            if step:
                step(n_rows * k)

    logits, logits_other = run.paired_sweep(
        run_other, start, offsets, _first_layers(edits, todo),
        _editing(adapter, removal, edits, todo, lambda n, v: variant_rows(n_rows, n, v, where)),
        _editing(adapter, removal, edits, todo, lambda n, v: variant_rows(n_rows, n, v, where_other)), variants, done)
    _fill(results[0][1], logits, prep, todo, copies)
    _fill(results[1][1], logits_other, other, todo, copies)
    return results[0], results[1]


def edited_by(pairs: PairedBatches | None):
    """The function a sweep computes edited log-odds with: `pairs.edited`, or `edited_log_odds` without pairs."""
    return pairs.edited if pairs is not None else edited_log_odds


class PairedBatches:
    """Batches of the same items under two settings, whose edited passes run together
    (`paired_log_odds`) when the first of the two comes up; the second's result waits for its turn, and
    its progress steps with it. A batch without a partner, or asked for other edits than its partner
    computed, runs alone (`edited_log_odds`)."""

    def __init__(self, preps: Sequence[Prepared], enabled: bool = True) -> None:
        self.partner: dict[int, Prepared] = {}
        self.waiting: dict[int, tuple[tuple, tuple[torch.Tensor, torch.Tensor], int]] = {}
        if not enabled:
            return
        seen: dict[tuple, Prepared] = {}
        for p in preps:
            key = tuple(s.item_id for s in p.samples)
            if key in seen:
                self.partner[id(seen.pop(key))] = p
            else:
                seen[key] = p

    def edited(self, adapter: ModelAdapter, prep: Prepared, edits: Sequence[HeadSetEdit], removal: Removal,
               on_step: OnStep = None, variants: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`edited_log_odds(adapter, prep, edits, removal, on_step, variants)`."""
        key = _edits_key(edits)
        held = self.waiting.pop(id(prep), None)
        if held is not None and held[0] == key:
            if on_step and held[2]:
                on_step(held[2])
            return held[1]
        other = self.partner.pop(id(prep), None)
        if other is None:
            return edited_log_odds(adapter, prep, edits, removal, on_step, variants)
        steps = [0]

        def count(k: int) -> None:
            steps[0] += k

        mine, theirs = paired_log_odds(adapter, prep, other, edits, removal, on_step, count, variants)
        self.waiting[id(other)] = (key, theirs, steps[0])
        return mine


def first_order_drops(
    adapter: ModelAdapter, prep: Prepared, removal: Removal, record: bool = False, keep_final: bool = True
) -> tuple[torch.Tensor, PrefixRun | None]:
    """(`[B, T, L, H]` first-order estimate of the drop in following log-odds from removing each head at
    each single position, `(a - a') · ∂log-odds/∂a`; with `record`, that pass recorded as a `PrefixRun`,
    keeping what a last-position sweep needs if `keep_final`): one forward and one backward pass."""
    parts, batch = adapter.parts, prep.batch
    run = None
    with torch.enable_grad(), record_heads(adapter, detach=False) as rec:
        if record:
            run = PrefixRun(adapter, batch, keep_final=keep_final, grad=True)
            last = run.logits
        else:
            last = adapter.last_logits(batch, grad=True)
        log_odds = binary_scores(last, prep.ids)[0]
        acts = [rec[l] for l in parts.head_layers]
        # rows never mix in a forward pass, so the gradient of the sum is each row's own gradient
        grads = torch.autograd.grad(log_odds.sum(), acts)
    per_layer = []
    for l, act, grad in zip(parts.head_layers, acts, grads):
        act = act.detach()
        per_layer.append(((act - removal.replacement(l, parts.n_heads, act)) * grad).sum(-1).float().cpu())  # [B, T, H]
    if run is not None:
        run.logits = run.logits.detach()
    drops = torch.stack(per_layer, 2)  # [B, T, L with heads, H]
    if parts.linear:
        n_rows, n_tok = drops.shape[:2]
        drops = by_head(drops.flatten(0, 1).flatten(1), parts).view(n_rows, n_tok, parts.n_layers, parts.n_heads)
    return drops, run


def attribution_scores(adapter: ModelAdapter, preps: Sequence[Prepared], removal: Removal, on_step: OnStep = None) -> torch.Tensor:
    """`[N, L, H]` first-order estimate of `ablation_scores`: `Σ_t (a - a') · ∂log-odds/∂a`."""
    out = []
    for p in preps:
        per_position, _ = first_order_drops(adapter, p, removal)
        where = position_mask(p.batch, removal.positions).cpu()
        out.append((per_position * where[..., None, None]).sum(1))
        if on_step:
            on_step(len(p.batch))
    return torch.cat(out)


def hybrid_scores(adapter: ModelAdapter, preps: Sequence[Prepared], removal: Removal, on_step: OnStep = None) -> torch.Tensor:
    """`[N, L, H]` `ablation_scores` estimated exactly where the answer is read out and to first order
    elsewhere: the drop from removing each head at the last position, measured (every head in one
    last-position sweep, from the attribution pass's own record), plus attribution patching's estimate
    for the removal's other positions. A head's removal at the last position acts on the log-odds
    through every later layer at that position, where a first-order estimate is furthest off (on the
    organism it puts 2 of the exact top 4 in its top 4, and this estimate all 4).

    Removal at `last` is the exact scan; at `instruction` (no last position) it is attribution patching.
    """
    parts = adapter.parts
    heads = parts.heads()
    at_last = replace(removal, positions="last")
    out = []
    for p in preps:
        where = position_mask(p.batch, removal.positions).cpu()
        last = where & p.batch.group_mask("last").cpu()
        if not last.any():
            per_position, _ = first_order_drops(adapter, p, removal)
            scores = (per_position * where[..., None, None]).sum(1)
        elif removal.positions == "last":
            scores = by_head(exact_drops(adapter, p, removal, heads), parts)
        else:
            if not torch.equal(last, p.batch.group_mask("last").cpu()):
                raise ValueError(f"removal at {removal.positions!r} covers the last position of some rows only")
            scores = _hybrid_batch(adapter, p, removal, at_last, heads, where & ~last)
        out.append(scores)
        if on_step:
            on_step(len(p.batch))
    return torch.cat(out)


def _hybrid_batch(adapter: ModelAdapter, prep: Prepared, removal: Removal, at_last: Removal, heads: Sequence[Head],
                  elsewhere: torch.Tensor) -> torch.Tensor:
    """`[B, L, H]` one batch's hybrid scores (a function of its own, so that the recorded pass it keeps is
    freed before the next batch's forward and backward pass)."""
    parts = adapter.parts
    # a right-padded batch takes the suffix sweep, which walks the layers itself: nothing to keep for it
    keep = all(l == prep.batch.inputs["input_ids"].shape[1] - 1 for l in prep.batch.last)
    per_position, run = first_order_drops(adapter, prep, removal, record=True, keep_final=keep)
    base, after = edited_log_odds(adapter, prep, [((head,), 0.0) for head in heads], at_last, run=run)
    exact = by_head((base[None] - after).T, parts)
    return (per_position * elsewhere[..., None, None]).sum(1) + exact


def dla_scores(adapter: ModelAdapter, preps: Sequence[Prepared], on_step: OnStep = None) -> torch.Tensor:
    """`[N, L, H]` direct logit attribution of each head at the last position onto following − competitor.

    The read-out (final norm, unembedding, log-odds) is linearised at the actual final residual by its
    gradient there; a family whose attention writes through a post-norm (Gemma's sandwich norms) has
    that norm linearised the same way, at its actual input.
    """
    parts = adapter.parts
    sandwich = {l: adapter.attn_writer(l) is not parts.attn(l) for l in parts.head_layers}
    out = []
    for p in preps:
        batch = p.batch
        last = torch.tensor(batch.last, device=adapter.device)
        rows = torch.arange(len(batch), device=adapter.device)
        taken: dict = {}

        def grab(key):
            def hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                taken[key] = hidden[rows, last].detach()

            return hook

        with torch.no_grad(), ExitStack() as stack, record_heads(adapter) as rec:
            stack.callback(parts.final_norm.register_forward_pre_hook(grab("final"), with_kwargs=True).remove)
            for l in parts.head_layers:
                if sandwich[l]:
                    stack.callback(adapter.attn_writer(l).register_forward_pre_hook(grab(l), with_kwargs=True).remove)
            adapter.model(**batch.inputs, use_cache=False)
        with torch.enable_grad():
            final = taken["final"].clone().requires_grad_(True)
            log_odds = binary_scores(lens_logits(adapter, final).float(), p.ids)[0]
            g_final = torch.autograd.grad(log_odds.sum(), final)[0]  # [B, d]
        scores = torch.full((len(batch), parts.n_layers, parts.n_heads), float("nan"))
        for l in parts.head_layers:
            g = g_final
            if sandwich[l]:
                with torch.enable_grad():
                    x = taken[l].clone().requires_grad_(True)
                    g = torch.autograd.grad(adapter.attn_writer(l)(x), x, grad_outputs=g_final)[0]
            with torch.no_grad():
                w = parts.o_proj(l).weight  # [d, H * D]: head h writes W[:, h-slice] @ a_h
                back = (g.to(w.dtype) @ w).reshape(len(batch), parts.n_heads, parts.head_dim(l))
                a = rec[l][rows, last]  # [B, H, D]
                scores[:, l] = (a * back).sum(-1).float().cpu()
        out.append(scores)
        if on_step:
            on_step(len(batch))
    return torch.cat(out)


def n_verified(total: int, fraction: float = VERIFY_FRACTION) -> int:
    """How many of a model's `total` attention heads `verified` checks by exact ablation per ranking key
    (setting or pooled)."""
    return min(total, max(1, math.ceil(fraction * total)))


def verification_candidates(preps: Sequence[Prepared], scores: torch.Tensor, n: int) -> list[Head]:
    """The top `n` heads of each setting's and of the pooled mean score (union, in ranking order)."""
    chosen: dict[Head, None] = {}
    for matrix in score_matrices(preps, scores).values():
        chosen.update({(l, h): None for l, h, _ in rank(matrix)[:n]})
    return list(chosen)


def verified_scores(
    adapter: ModelAdapter, preps: Sequence[Prepared], removal: Removal, on_step: OnStep = None, fraction: float = VERIFY_FRACTION
) -> torch.Tensor:
    """`[N, L, H]` hybrid scores (`hybrid_scores`: attribution patching, exact at the last position), with
    the exact ablation drop in place for the candidates they propose (`verification_candidates`): one
    forward and backward pass per batch, plus exact removal of a few heads instead of every head.
    Candidates come from the scores of `preps` as passed: a caller that scores batch by batch gets each
    batch's own candidates."""
    parts = adapter.parts
    n = n_verified(len(parts.heads()), fraction)
    scores = hybrid_scores(adapter, preps, removal, on_step)
    if removal.positions == "last":  # the hybrid scores are the exact scan there: nothing left to verify
        if on_step:
            on_step(sum(len(p.batch) for p in preps) * n)
        return scores
    candidates = verification_candidates(preps, scores, n)
    layer_idx = torch.tensor([l for l, _ in candidates])
    head_idx = torch.tensor([h for _, h in candidates])
    row = 0
    for p in preps:
        exact = exact_drops(adapter, p, removal, candidates)
        scores[row : row + len(p.batch), layer_idx, head_idx] = exact
        row += len(p.batch)
        if on_step:
            on_step(len(p.batch) * n)
    return scores


def method_scores(adapter: ModelAdapter, preps: Sequence[Prepared], method: str, removal: Removal, on_step: OnStep = None,
                  pairs: PairedBatches | None = None) -> torch.Tensor:
    """`[N, L, H]` scores of `method` (`pairs`: batches of the same items run together, for `ablation`)."""
    if method == "ablation":
        return ablation_scores(adapter, preps, removal, on_step, pairs=pairs)
    if method == "attribution":
        return attribution_scores(adapter, preps, removal, on_step)
    if method == "hybrid":
        return hybrid_scores(adapter, preps, removal, on_step)
    if method == "verified":
        return verified_scores(adapter, preps, removal, on_step)
    if method == "dla":
        return dla_scores(adapter, preps, on_step)
    raise ValueError(f"unknown ranking method {method!r}; choose from {', '.join(METHODS)}")


def passes_per_sample(method: str, total: int) -> int:
    """How many sample-passes a method costs per sample of a model with `total` attention heads (for progress bars)."""
    if method == "ablation":
        return total
    return 1 + n_verified(total) if method == "verified" else 1


# ------------------------------------------------------------------------------------ summaries
def score_rows(preps: Sequence[Prepared], method: str, scores: torch.Tensor) -> list[dict]:
    """One row per sample and head."""
    rows, i = [], 0
    n_layers, n_heads = scores.shape[1:]
    heads = attention_heads(n_layers, n_heads, unscored_layers(scores))
    for p in preps:
        for s in p.samples:
            for l, h in heads:
                rows.append({"item_id": s.item_id, "task": s.task, "setting": s.condition.value,
                             "method": method, "layer": l, "head": h, "score": float(scores[i, l, h])})
            i += 1
    return rows


def score_matrices(preps: Sequence[Prepared], scores: torch.Tensor) -> dict[str, list[list[float]]]:
    """`{setting: [L][H] mean score, ..., "pooled": mean of the settings' matrices}`."""
    settings = [s.condition.value for p in preps for s in p.samples]
    out = {}
    for setting in dict.fromkeys(settings):
        sel = torch.tensor([c == setting for c in settings])
        out[setting] = scores[sel].mean(0)
    pooled = torch.stack(list(out.values())).mean(0)
    return {**{k: v.tolist() for k, v in out.items()}, "pooled": pooled.tolist()}


def rank(matrix: Sequence[Sequence[float]]) -> list[tuple[int, int, float]]:
    """Every head as (layer, head, score), highest score first (ties: lower layer, then head); a layer
    without heads (all its scores NaN) is left out."""
    skip = unscored_layers(matrix)
    flat = [(l, h, float(v)) for l, row in enumerate(matrix) if l not in skip for h, v in enumerate(row)]
    return sorted(flat, key=lambda t: (-t[2], t[0], t[1]))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # ties share their mean rank
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _average_ranks(np.asarray(a, float)), _average_ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def method_agreement(pooled: dict[str, Sequence[Sequence[float]]], n_top: int) -> dict[str, dict]:
    """For each pair of methods: Spearman correlation of the pooled scores over all heads, and how many
    of one method's top `n_top` heads the other also puts in its top `n_top`."""
    out = {}
    names = list(pooled)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            fa, fb = np.ravel(pooled[a]), np.ravel(pooled[b])
            scored = ~(np.isnan(fa) & np.isnan(fb))  # the layers without heads
            fa, fb = fa[scored], fb[scored]
            top_a = {(l, h) for l, h, _ in rank(pooled[a])[:n_top]}
            top_b = {(l, h) for l, h, _ in rank(pooled[b])[:n_top]}
            out[f"{a}~{b}"] = {"spearman": spearman(fa, fb), "top_overlap": len(top_a & top_b), "n_top": n_top}
    return out
