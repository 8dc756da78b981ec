"""Blocking and amplification sweeps over head sets (mission.md §5), with their baselines and controls.

The items are split once, by a seeded split stratified by task, into a *ranking* split (heads are
ranked there, and mean-ablation means come from there) and a disjoint *evaluation* split, where every
effect below is measured.

A sweep is a list of `Arm`s: one head set, one scale (0 blocks, α amplifies), run over the settings
(and optionally the controls) of the evaluation split. `run_arms` turns arms into per-sample rows;
`summarise_blocking`, `summarise_dose` and `summarise_amplification` turn rows into results.json.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..data.records import Condition, ConflictItem
from ..errors import UserError
from ..models.adapter import ModelAdapter
from .head_sets import HeadSet, n_selected
from .heads import ABLATION_MODES, METHODS, POSITIONS, Head, Prepared, Removal, edited_log_odds, log_odds_under
from .stats import bootstrap_ci

POOLED = "conflict"  # the settings pooled together, the headline row


# ------------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class SweepConfig:
    """`conf/sweep/default.yaml`, validated: every bad value is a `UserError` before any work starts."""

    methods: tuple[str, ...]
    rank_method: str
    rank_by: str
    rank_fraction: float
    min_split_items: int
    settings: tuple[Condition, ...]
    controls: tuple[Condition, ...]
    top_k: float
    top_n: int | None
    ks: tuple[float, ...]
    n_random: int
    n_random_dose: int
    ablation: str
    positions: str
    alphas: tuple[float, ...]
    heads_file: str | None
    allow_other_model: bool

    @classmethod
    def from_cfg(cls, sweep: DictConfig) -> SweepConfig:
        s = OmegaConf.to_container(sweep, resolve=True)
        methods = tuple(s["methods"])
        rank_method = s["rank_method"]
        for m in (*methods, rank_method):
            if m not in METHODS:
                raise UserError(f"unknown ranking method {m!r}; choose from {', '.join(METHODS)}")
        if rank_method not in methods:
            methods = (*methods, rank_method)
        settings, controls = _conditions(s["settings"], "sweep.settings"), _conditions(s["controls"], "sweep.controls")
        if not settings:
            raise UserError("sweep.settings names no setting")
        rank_by = s["rank_by"]
        if rank_by not in ("pooled", *(c.value for c in settings)):
            raise UserError(f"sweep.rank_by={rank_by!r} must be 'pooled' or one of sweep.settings")
        top_n = s.get("top_n")
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise UserError(f"--top-n {top_n} must be a whole number of heads >= 1")
        top_k = _fraction(s["top_k"], "--top-k")
        ks = tuple(_fraction(k, "sweep.ks entry") for k in s["ks"])
        alphas = tuple(_positive(a) for a in s["alphas"])
        if not alphas:
            raise UserError("sweep.alphas needs at least one α")
        fraction = float(s["rank_fraction"])
        if not 0 < fraction < 1:
            raise UserError(f"sweep.rank_fraction={fraction} must lie strictly between 0 and 1")
        if int(s["n_random"]) < 2 or int(s["n_random_dose"]) < 2:
            raise UserError("sweep.n_random and sweep.n_random_dose need at least 2 seeds for an interval")
        if s["ablation"] not in ABLATION_MODES:
            raise UserError(f"sweep.ablation={s['ablation']!r}: choose {' or '.join(ABLATION_MODES)}")
        if s["positions"] not in POSITIONS:
            raise UserError(f"sweep.positions={s['positions']!r}: choose from {', '.join(POSITIONS)}")
        return cls(
            methods=methods, rank_method=rank_method, rank_by=rank_by, rank_fraction=fraction,
            min_split_items=max(1, int(s["min_split_items"])), settings=settings, controls=controls,
            top_k=top_k, top_n=top_n, ks=ks, n_random=int(s["n_random"]), n_random_dose=int(s["n_random_dose"]),
            ablation=s["ablation"], positions=s["positions"], alphas=alphas,
            heads_file=s.get("heads_file") or None, allow_other_model=bool(s["allow_other_model"]),
        )

    def n_selected(self, total: int) -> int:
        return n_selected(total, top_k=None if self.top_n is not None else self.top_k, top_n=self.top_n)

    def check_heads(self, total: int) -> None:
        """Every head count the sweep asks for exists (and random sets are not all the same set)."""
        n = self.n_selected(total)
        for k in self.ks:
            n_selected(total, top_k=k)
        if n >= total:
            raise UserError(f"blocking {n} of the model's {total} heads leaves no other heads to draw random sets from; "
                            "lower --top-k / --top-n")


def _fraction(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} {value!r} is not a number") from None
    if not 0 < v <= 1:
        raise UserError(f"{name} {v} must be a fraction of the heads in (0, 1]")
    return v


def _positive(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"α {value!r} is not a number") from None
    if not v > 0:
        raise UserError(f"α {v} must be > 0 (α > 1 amplifies, α < 1 damps)")
    return v


def _conditions(names: Iterable[str], key: str) -> tuple[Condition, ...]:
    try:
        return tuple(Condition(c) for c in names)
    except ValueError as exc:
        raise UserError(f"{key}: {exc}; conditions are {', '.join(c.value for c in Condition)}") from None


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


def random_sets(n_layers: int, n_heads: int, n: int, n_seeds: int, seed: int) -> list[tuple[Head, ...]]:
    """`n_seeds` random sets of `n` heads; set s depends only on (seed, n, s)."""
    heads = [(l, h) for l in range(n_layers) for h in range(n_heads)]
    out = []
    for s in range(n_seeds):
        rng = np.random.default_rng([int(seed), int(n), int(s), 0xAB1])
        out.append(tuple(heads[i] for i in sorted(rng.choice(len(heads), size=n, replace=False))))
    return out


# ------------------------------------------------------------------------------------ running arms
@dataclass(frozen=True)
class Arm:
    """One head set under one scale, on the settings (and the controls, when `controls`)."""

    study: str  # headline | dose | amplify
    set: str  # top | bottom | random
    heads: tuple[Head, ...]
    scale: float  # 0: block; α: amplify
    k: float | None = None  # the fraction of heads it was chosen as
    seed: int | None = None
    controls: bool = False

    def tag(self) -> dict:
        return {"study": self.study, "set": self.set, "k": self.k, "n_heads": len(self.heads), "seed": self.seed,
                "scale": self.scale, "heads": ";".join(f"{l}.{h}" for l, h in self.heads)}


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
                 plain: bool = True) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """(`[B]` plain, per arm `[B]`) following log-odds of one batch under each arm's edit. `fast` runs
    them from one recorded pass (`edited_log_odds`: prefix reuse, suffix sweeps, stacking; that pass is
    the plain log-odds); `fast=False` runs one full forward pass per arm, and one for the plain model
    unless `plain` is False (then None). No arms and no `plain`: no pass at all."""
    if not arms and not plain:
        return None, []
    if fast:
        base, after = edited_log_odds(adapter, prep, [(arm.heads, arm.scale) for arm in arms], removal, on_step)
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
             for s, hs in enumerate(random_sets(head_set.n_layers, head_set.n_heads, n, cfg.n_random, seed))]
    if with_dose and head_set.ranking:
        for k in cfg.ks:
            n_k = n_selected(total, top_k=k)
            arms.append(Arm("dose", "top", head_set.top(n_k), 0.0, k))
            arms.append(Arm("dose", "bottom", head_set.bottom(n_k), 0.0, k))
            if n_k < total:
                arms += [Arm("dose", "random", hs, 0.0, k, seed=s)
                         for s, hs in enumerate(random_sets(head_set.n_layers, head_set.n_heads, n_k, cfg.n_random_dose, seed))]
    return arms


def amplification_arms(heads: Sequence[Head], alphas: Sequence[float]) -> list[Arm]:
    return [Arm("amplify", "top", tuple(heads), float(a), controls=True) for a in alphas]


def random_amplification_arms(head_set: HeadSet, n: int, alpha: float, n_seeds: int, seed: int) -> list[Arm]:
    return [Arm("amplify", "random", hs, float(alpha), seed=s)
            for s, hs in enumerate(random_sets(head_set.n_layers, head_set.n_heads, n, n_seeds, seed))]


# ------------------------------------------------------------------------------------ summaries
def _clean(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def share(values: Sequence[float], n_boot: int, seed: int) -> dict:
    """Mean with a 95% bootstrap interval; None entries when there are no values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    return {"mean": float(x.mean()), "ci_low": lo, "ci_high": hi, "n": int(x.size)}


def over_seeds(per_seed: Sequence[float], n_boot: int, seed: int) -> dict:
    """Random-set baseline: mean over seeds, the 95% interval of that mean, and the 2.5–97.5%
    spread of single random sets."""
    x = np.asarray([v for v in per_seed if v is not None], dtype=float)
    if x.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "spread_low": None, "spread_high": None, "n_seeds": 0}
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    s_lo, s_hi = np.quantile(x, [0.025, 0.975])
    return {"mean": float(x.mean()), "ci_low": lo, "ci_high": hi, "spread_low": float(s_lo), "spread_high": float(s_hi),
            "n_seeds": int(x.size), "per_seed": [float(v) for v in x]}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _of(rows: Iterable[dict], condition: str, settings: Sequence[str]) -> list[dict]:
    return [r for r in rows if r["condition"] == condition or (condition == POOLED and r["condition"] in settings)]


def _after(rows: Sequence[dict], n_boot: int, seed: int) -> dict:
    """Levels after the edit, and the paired per-sample change (after − before) with its interval."""
    return {"mfr": share([r["follows_after"] for r in rows], n_boot, seed),
            "log_odds": share([r["log_odds_after"] for r in rows], n_boot, seed),
            "change": {"mfr": share([r["follows_after"] - r["follows_before"] for r in rows], n_boot, seed),
                       "log_odds": share([r["log_odds_after"] - r["log_odds_before"] for r in rows], n_boot, seed)}}


def _random(rows: Sequence[dict], n_boot: int, seed: int) -> dict:
    """Per random set (seed): the mean level and change; then their distribution over sets."""
    by_seed: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_seed[r["seed"]].append(r)
    sets = by_seed.values()
    return {
        "mfr": over_seeds([np.mean([r["follows_after"] for r in rs]) for rs in sets], n_boot, seed),
        "log_odds": over_seeds([np.mean([r["log_odds_after"] for r in rs]) for rs in sets], n_boot, seed),
        "change": {
            "mfr": over_seeds([np.mean([r["follows_after"] - r["follows_before"] for r in rs]) for rs in sets], n_boot, seed),
            "log_odds": over_seeds([np.mean([r["log_odds_after"] - r["log_odds_before"] for r in rs]) for rs in sets], n_boot, seed),
        },
    }


def summarise_blocking(rows: Sequence[dict], settings: Sequence[str], controls: Sequence[str], n_boot: int = 1000,
                       seed: int = 0) -> dict[str, dict]:
    """Per condition (and the pooled settings): before, after blocking the top set, the lowest-ranked
    set and random sets, the paired changes, and whether the top set's change clears the random one."""
    headline = [r for r in rows if r["study"] == "headline"]
    out = {}
    for cond in (POOLED, *settings, *controls):
        rs = _of(headline, cond, settings)
        by_set: dict[str, list[dict]] = defaultdict(list)
        for r in rs:
            by_set[r["set"]].append(r)
        if not by_set.get("top"):
            continue
        top = by_set["top"]
        entry = {
            "kind": "setting" if cond in (POOLED, *settings) else "control",
            "n": len(top),
            "before": {"mfr": share([r["follows_before"] for r in top], n_boot, seed),
                       "log_odds": share([r["log_odds_before"] for r in top], n_boot, seed)},
        }
        before = entry["before"]["mfr"]["mean"]
        for name in ("top", "bottom"):
            if by_set.get(name):
                entry[name] = _after(by_set[name], n_boot, seed)
                entry[name]["relative_mfr_drop"] = _clean((before - entry[name]["mfr"]["mean"]) / before) if before else None
        if by_set.get("random"):
            entry["random"] = _random(by_set["random"], n_boot, seed)
            entry["random"]["relative_mfr_drop"] = _clean((before - entry["random"]["mfr"]["mean"]) / before) if before else None
            entry["separation"] = separation(entry["top"], entry["random"])
        out[cond] = entry
    return out


def separation(top: dict, random: dict) -> dict:
    """Does blocking the top set lower MFR / log-odds by more than random sets do? `separated`: the
    95% interval of the top set's mean change lies wholly below that of the random sets' mean change."""
    out = {}
    for metric in ("mfr", "log_odds"):
        t, r = top["change"][metric], random["change"][metric]
        out[metric] = {
            "top_change": t["mean"],
            "top_ci_high": t["ci_high"],
            "random_change": r["mean"],
            "random_ci_low": r["ci_low"],
            "separated": bool(t["ci_high"] is not None and r["ci_low"] is not None and t["ci_high"] < r["ci_low"]),
            # share of single random sets that hurt at least as much as the top set (an empirical p-value)
            "random_at_least_as_low": float(np.mean([v <= t["mean"] for v in r["per_seed"]])) if r.get("per_seed") else None,
        }
    return out


def summarise_dose(rows: Sequence[dict], settings: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict[str, list[dict]]:
    """{condition: [per k: top / bottom after, random mean over seeds with interval]}."""
    dose = [r for r in rows if r["study"] == "dose"]
    out: dict[str, list[dict]] = {}
    for cond in (POOLED, *settings):
        rs = _of(dose, cond, settings)
        points = []
        for k in sorted({r["k"] for r in rs}):
            at = [r for r in rs if r["k"] == k]
            point = {"k": k, "n_heads": at[0]["n_heads"],
                     "before": {"mfr": float(np.mean([r["follows_before"] for r in at if r["set"] == "top"])),
                                "log_odds": float(np.mean([r["log_odds_before"] for r in at if r["set"] == "top"]))}}
            for name in ("top", "bottom"):
                sel = [r for r in at if r["set"] == name]
                if sel:
                    point[name] = _after(sel, n_boot, seed)
            sel = [r for r in at if r["set"] == "random"]
            if sel:
                point["random"] = _random(sel, n_boot, seed)
            points.append(point)
        if points:
            out[cond] = points
    return out


def _recovery_harm(rows: Sequence[dict], n_boot: int, seed: int) -> dict:
    failed = [r for r in rows if not r["follows_before"]]
    followed = [r for r in rows if r["follows_before"]]
    return {
        "n": len(rows),
        "n_failed": len(failed),
        "n_followed": len(followed),
        "recovery": share([r["follows_after"] for r in failed], n_boot, seed),
        "harm": share([not r["follows_after"] for r in followed], n_boot, seed),
        "mfr_after": share([r["follows_after"] for r in rows], n_boot, seed),
        "failed_log_odds_change": share([r["log_odds_after"] - r["log_odds_before"] for r in failed], n_boot, seed),
    }


def summarise_amplification(rows: Sequence[dict], settings: Sequence[str], controls: Sequence[str], n_boot: int = 1000,
                            seed: int = 0) -> dict:
    """Per α: recovery (share of failed samples that now follow), harm (share of following samples
    that flip), per setting and pooled, and control accuracy before and after."""
    top = [r for r in rows if r["study"] == "amplify" and r["set"] == "top"]
    per_alpha = []
    for alpha in sorted({r["scale"] for r in top}):
        at = [r for r in top if r["scale"] == alpha]
        entry = {"alpha": alpha, "settings": {}, "controls": {}}
        for cond in (POOLED, *settings):
            entry["settings"][cond] = _recovery_harm(_of(at, cond, settings), n_boot, seed)
        for cond in controls:
            cs = _of(at, cond, settings)
            if cs:
                entry["controls"][cond] = {
                    "before": share([r["follows_before"] for r in cs], n_boot, seed)["mean"],
                    "after": share([r["follows_after"] for r in cs], n_boot, seed),
                }
                entry["controls"][cond]["change"] = entry["controls"][cond]["after"]["mean"] - entry["controls"][cond]["before"]
        per_alpha.append(entry)
    return {"per_alpha": per_alpha, "best_alpha": best_alpha(per_alpha)}


def best_alpha(per_alpha: Sequence[dict]) -> float | None:
    """The α with the largest pooled recovery − harm (the smaller α on ties); recovery counts 0 when
    nothing failed."""
    def net(e):
        s = e["settings"][POOLED]
        return (s["recovery"]["mean"] or 0.0) - (s["harm"]["mean"] or 0.0)

    if not per_alpha:
        return None
    return max(per_alpha, key=lambda e: (net(e), -e["alpha"]))["alpha"]


def summarise_random_amplification(rows: Sequence[dict], settings: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """Random sets at the best α: recovery and harm per seed, then over seeds."""
    rand = [r for r in rows if r["study"] == "amplify" and r["set"] == "random"]
    out = {}
    for cond in (POOLED, *settings):
        rs = _of(rand, cond, settings)
        by_seed: dict[int, list[dict]] = defaultdict(list)
        for r in rs:
            by_seed[r["seed"]].append(r)
        recovery = [_mean([r["follows_after"] for r in v if not r["follows_before"]]) for v in by_seed.values()]
        harm = [_mean([not r["follows_after"] for r in v if r["follows_before"]]) for v in by_seed.values()]
        out[cond] = {
            "alpha": rs[0]["scale"] if rs else None,
            "recovery": over_seeds(recovery, n_boot, seed),
            "harm": over_seeds(harm, n_boot, seed),
        }
    return out
