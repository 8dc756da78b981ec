"""Blocking and amplification sweeps over head sets (docs/method.md §5): the splits, the arms, and
running them.

The items are split once, by a seeded split stratified by task, into a *ranking* split (heads are
ranked there, and mean-ablation means come from there) and a disjoint *evaluation* split, where every
effect is measured.

A sweep is a list of `Arm`s: one head set, one scale (0 blocks, α amplifies), run over the settings
(and optionally the controls) of the evaluation split. `run_arms` turns arms into per-sample rows;
`summaries` turns rows into results.json.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...core.errors import UserError
from ...core.heads_file import HeadSet, n_selected
from ...core.records import Condition, ConflictItem
from ...models.adapter import ModelAdapter
from .config import SweepConfig
from .methods import Head, PairedBatches, Prepared, Removal, edited_by, log_odds_under


# ------------------------------------------------------------------------------------ splits and sets
def split_items(items: Sequence[ConflictItem], rank_fraction: float, seed: int) -> tuple[list[ConflictItem], list[ConflictItem]]:
    """(ranking split, evaluation split), disjoint, each in the items' own order.

    Items are shuffled within each task and the tasks interleaved before the first share is cut off,
    so both splits cover every task about in proportion.
    """
    rng = np.random.default_rng([int(seed), 0x5B1])
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_task[it.task].append(i)
    queues = [list(rng.permutation(idx)) for _, idx in sorted(by_task.items())]
    order: list[int] = []
    while any(queues):
        for q in queues:
            if q:
                order.append(int(q.pop(0)))
    n_rank = int(round(rank_fraction * len(items)))
    chosen = set(order[:n_rank])
    return [it for i, it in enumerate(items) if i in chosen], [it for i, it in enumerate(items) if i not in chosen]


def check_split_sizes(n_rank: int, n_eval: int, n_items: int, cfg: SweepConfig) -> None:
    for name, n in (("ranking", n_rank), ("evaluation", n_eval)):
        if n < cfg.min_split_items:
            raise UserError(
                f"the {name} split holds {n} item(s) (sweep.rank_fraction={cfg.rank_fraction} of {n_items}); "
                f"at least sweep.min_split_items={cfg.min_split_items} are needed: add items or change the fraction"
            )


def random_sets(heads: Sequence[Head], n: int, n_seeds: int, seed: int) -> list[tuple[Head, ...]]:
    """`n_seeds` random sets of `n` of `heads` (a head set's `candidates`: every attention head, layer by
    layer); set s depends only on (seed, n, s) and the candidates."""
    heads = list(heads)
    out = []
    for s in range(n_seeds):
        rng = np.random.default_rng([int(seed), int(n), int(s), 0xAB1])
        out.append(tuple(heads[i] for i in sorted(rng.choice(len(heads), size=n, replace=False))))
    return out


# ------------------------------------------------------------------------------------ running arms
@dataclass(frozen=True)
class Arm:
    """One head set under one scale, on the settings (and the controls, when `controls`)."""

    study: str  # headline | dose | amplify | interaction
    set: str  # top | bottom | random; interaction: alone | without
    heads: tuple[Head, ...]
    scale: float  # 0: block; α: amplify
    k: float | None = None  # the fraction of heads it was chosen as
    seed: int | None = None
    controls: bool = False
    about: Head | None = None  # interaction arms: the head edited alone, or left out of the set

    def tag(self) -> dict:
        return {"study": self.study, "set": self.set, "k": self.k, "n_heads": len(self.heads), "seed": self.seed,
                "scale": self.scale, "heads": ";".join(f"{l}.{h}" for l, h in self.heads),
                "about": None if self.about is None else f"{self.about[0]}.{self.about[1]}"}


def split_preps(preps: Sequence[Prepared], settings: Sequence[Condition]) -> tuple[list[Prepared], list[Prepared]]:
    """(setting batches, control batches): a batch never mixes conditions."""
    keep = set(settings)
    return [p for p in preps if p.samples[0].condition in keep], [p for p in preps if p.samples[0].condition not in keep]


def baseline(adapter: ModelAdapter, preps: Sequence[Prepared], on_step: Callable[[int], None] | None = None) -> list:
    """Each batch's unedited log-odds, computed once and shared by every arm."""
    out = []
    for p in preps:
        out.append(log_odds_under(adapter, p))
        if on_step:
            on_step(len(p.batch))
    return out


def arm_cost(arm: Arm, settings: Sequence[Prepared], controls: Sequence[Prepared]) -> int:
    return sum(len(p.batch) for p in (*settings, *(controls if arm.controls else ())))


def arm_log_odds(adapter: ModelAdapter, prep: Prepared, arms: Sequence[Arm], removal: Removal,
                 on_step: Callable[[int], None] | None = None, fast: bool = True,
                 plain: bool = True, pairs: PairedBatches | None = None) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """(`[B]` plain, per arm `[B]`) following log-odds of one batch under each arm's edit. `fast` runs
    them from one recorded pass (`edited_log_odds`: prefix reuse, suffix sweeps, stacking; that pass is
    the plain log-odds); `fast=False` runs one full forward pass per arm, and one for the plain model
    unless `plain` is False (then None). No arms and no `plain`: no pass at all. `pairs`: batches of the
    same items whose fast passes run together (`PairedBatches`)."""
    if not arms and not plain:
        return None, []
    if fast:
        base, after = edited_by(pairs)(adapter, prep, [(arm.heads, arm.scale) for arm in arms], removal, on_step)
        return base, list(after)
    base = log_odds_under(adapter, prep) if plain else None
    after = []
    for arm in arms:
        after.append(log_odds_under(adapter, prep, removal.edits(arm.heads, prep.batch, arm.scale)))
        if on_step:
            on_step(len(prep.batch))
    return base, after


def applicable_arms(arms: Sequence[Arm], on_settings: bool) -> list[int]:
    """Indices of the arms that run on a batch: all of them on a settings batch, on a controls batch
    those that measure the controls."""
    return [a for a, arm in enumerate(arms) if on_settings or arm.controls]


def arm_rows(arm: Arm, prep: Prepared, before: Sequence[float], after: Sequence[float]) -> list[dict]:
    """Per-sample rows of one arm on one batch: log-odds and following before and under the arm."""
    tag = arm.tag()
    return [
        {
            **tag,
            "condition": s.condition.value,
            "item_id": s.item_id,
            "task": s.task,
            "log_odds_before": float(before[i]),
            "log_odds_after": float(after[i]),
            "follows_before": bool(before[i] > 0),  # log-odds > 0 is p_follow > 0.5
            "follows_after": bool(after[i] > 0),
        }
        for i, s in enumerate(prep.samples)
    ]


def run_arms(
    adapter: ModelAdapter,
    arms: Sequence[Arm],
    settings: Sequence[Prepared],
    controls: Sequence[Prepared],
    base: dict[int, object],
    removal: Removal,
    on_step: Callable[[int], None] | None = None,
    fast: bool = True,
) -> list[dict]:
    """Per-sample rows: log-odds and following before (from `base`, keyed by `id(prep)`) and under each
    arm, arm by arm (settings batches, then controls batches for arms with `controls`). Every batch's
    arms run together (`arm_log_odds`)."""
    after: dict[tuple[int, int], torch.Tensor] = {}
    for p in (*settings, *controls):
        applicable = applicable_arms(arms, any(p is q for q in settings))
        _, log_odds = arm_log_odds(adapter, p, [arms[a] for a in applicable], removal, on_step, fast, plain=False)
        after.update({(a, id(p)): lo for a, lo in zip(applicable, log_odds)})
    rows: list[dict] = []
    for a, arm in enumerate(arms):
        for p in (*settings, *(controls if arm.controls else ())):
            rows += arm_rows(arm, p, base[id(p)], after[(a, id(p))])
    return rows


def blocking_arms(head_set: HeadSet, n: int, cfg: SweepConfig, seed: int, with_dose: bool = True) -> list[Arm]:
    """Top-n and lowest-ranked n (settings and controls), random sets of n (settings), and the
    dose-response over `cfg.ks` (settings only)."""
    total = head_set.total
    arms = [Arm("headline", "top", head_set.top(n), 0.0, n / total, controls=True)]
    bottom = head_set.bottom(n)
    if bottom is not None:
        arms.append(Arm("headline", "bottom", bottom, 0.0, n / total, controls=True))
    arms += [Arm("headline", "random", hs, 0.0, n / total, seed=s)
             for s, hs in enumerate(random_sets(head_set.candidates, n, cfg.n_random, seed))]
    if with_dose and head_set.ranking:
        for k in cfg.ks:
            n_k = n_selected(total, top_k=k)
            arms.append(Arm("dose", "top", head_set.top(n_k), 0.0, k))
            arms.append(Arm("dose", "bottom", head_set.bottom(n_k), 0.0, k))
            if n_k < total:
                arms += [Arm("dose", "random", hs, 0.0, k, seed=s)
                         for s, hs in enumerate(random_sets(head_set.candidates, n_k, cfg.n_random_dose, seed))]
    return arms


def interaction_arms(heads: Sequence[Head], scale: float, limit: int) -> list[Arm]:
    """Per head of the set (its first `limit` heads): the head edited alone, and the set without it, so a
    head whose companions cancel it (or who carries the set alone) shows. None for a single head."""
    heads = tuple(heads)
    if len(heads) < 2:
        return []
    out = []
    for h in heads[:limit]:
        out.append(Arm("interaction", "alone", (h,), float(scale), about=h))
        out.append(Arm("interaction", "without", tuple(x for x in heads if x != h), float(scale), about=h))
    return out


def amplification_arms(heads: Sequence[Head], alphas: Sequence[float]) -> list[Arm]:
    return [Arm("amplify", "top", tuple(heads), float(a), controls=True) for a in alphas]


def ablate_arms(head_set: HeadSet, n: int, cfg: SweepConfig, seed: int) -> list[Arm]:
    """Every arm `ablate` runs on each batch: `blocking_arms`, then each top head alone and left out."""
    return blocking_arms(head_set, n, cfg, seed) + interaction_arms(head_set.top(n), 0.0, cfg.interactions)


def amplify_arms(head_set: HeadSet, n: int, cfg: SweepConfig) -> list[Arm]:
    """The arms of `amplify`'s first sweep: the top n at every α, then each top head alone and left out at every α."""
    arms = amplification_arms(head_set.top(n), cfg.alphas)
    return arms + [arm for alpha in cfg.alphas for arm in interaction_arms(head_set.top(n), alpha, cfg.interactions)]


def random_amplification_arms(head_set: HeadSet, n: int, alpha: float, n_seeds: int, seed: int) -> list[Arm]:
    return [Arm("amplify", "random", hs, float(alpha), seed=s)
            for s, hs in enumerate(random_sets(head_set.candidates, n, n_seeds, seed))]
