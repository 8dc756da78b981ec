"""Per-sample rows of the blocking and amplification sweeps turned into results.json: levels and paired
changes with 95% intervals, the random-set baselines, and whether the top set clears them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from ...core.names import POOLED
from ...core.results import Amplification, Blocking, Separation
from ...core.stats import mean_interval, over_seeds


def _clean(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _of(rows: Iterable[dict], condition: str, settings: Sequence[str]) -> list[dict]:
    return [r for r in rows if r["condition"] == condition or (condition == POOLED and r["condition"] in settings)]


def _after(rows: Sequence[dict], n_boot: int, seed: int) -> dict:
    """Levels after the edit, and the paired per-sample change (after − before) with its interval."""
    return {"mfr": mean_interval([r["follows_after"] for r in rows], n_boot, seed),
            "log_odds": mean_interval([r["log_odds_after"] for r in rows], n_boot, seed),
            "change": {"mfr": mean_interval([r["follows_after"] - r["follows_before"] for r in rows], n_boot, seed),
                       "log_odds": mean_interval([r["log_odds_after"] - r["log_odds_before"] for r in rows], n_boot, seed)}}


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
                       seed: int = 0) -> dict[str, Blocking]:
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
            "before": {"mfr": mean_interval([r["follows_before"] for r in top], n_boot, seed),
                       "log_odds": mean_interval([r["log_odds_before"] for r in top], n_boot, seed)},
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


def separation(top: dict, random: dict) -> dict[str, Separation]:
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
        "recovery": mean_interval([r["follows_after"] for r in failed], n_boot, seed),
        "harm": mean_interval([not r["follows_after"] for r in followed], n_boot, seed),
        "mfr_after": mean_interval([r["follows_after"] for r in rows], n_boot, seed),
        "failed_log_odds_change": mean_interval([r["log_odds_after"] - r["log_odds_before"] for r in failed], n_boot, seed),
    }


def summarise_amplification(rows: Sequence[dict], settings: Sequence[str], controls: Sequence[str], n_boot: int = 1000,
                            seed: int = 0) -> Amplification:
    """Per α: recovery (share of failed samples that now follow), harm (share of following samples
    that flip), per setting and pooled, control accuracy before and after, and, where the sweep ran
    them, each head alone and the set without it (`summarise_interactions`)."""
    top = [r for r in rows if r["study"] == "amplify" and r["set"] == "top"]
    per_alpha = []
    for alpha in sorted({r["scale"] for r in top}):
        at = [r for r in top if r["scale"] == alpha]
        entry = {"alpha": alpha, "settings": {}, "controls": {}}
        inter = [r for r in rows if r["study"] == "interaction" and r["scale"] == alpha]
        if inter:
            entry["interactions"] = summarise_interactions(inter, at, settings, amplify=True, n_boot=n_boot, seed=seed)
        for cond in (POOLED, *settings):
            entry["settings"][cond] = _recovery_harm(_of(at, cond, settings), n_boot, seed)
        for cond in controls:
            cs = _of(at, cond, settings)
            if cs:
                entry["controls"][cond] = {
                    "before": mean_interval([r["follows_before"] for r in cs], n_boot, seed)["mean"],
                    "after": mean_interval([r["follows_after"] for r in cs], n_boot, seed),
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


def summarise_interactions(rows: Sequence[dict], full: Sequence[dict], settings: Sequence[str], amplify: bool,
                           n_boot: int = 1000, seed: int = 0) -> dict[str, list[dict]]:
    """{condition: [per head of the set: the effect of that head alone, of the set without it, and its
    marginal effect (the whole set minus the set without it, paired per sample)]}.

    `rows` are the interaction arms' rows, `full` the whole set's rows under the same scale. Blocking
    reports levels and changes (`_after`); amplification recovery and harm (`_recovery_harm`), with the
    marginal change in following counted on the failed samples only."""
    inter = [r for r in rows if r["study"] == "interaction"]
    measure = (lambda rs: _recovery_harm(rs, n_boot, seed)) if amplify else (lambda rs: _after(rs, n_boot, seed))
    out: dict[str, list[dict]] = {}
    for cond in (POOLED, *settings):
        rs = _of(inter, cond, settings)
        whole = {(r["condition"], r["item_id"]): r for r in _of(full, cond, settings)}
        per_head: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for r in rs:
            per_head[r["about"]][r["set"]].append(r)
        entries = []
        for about, sets in per_head.items():
            without = sets.get("without", [])
            pairs = [(whole[(r["condition"], r["item_id"])], r) for r in without if (r["condition"], r["item_id"]) in whole]
            if amplify:
                pairs_mfr = [(a, b) for a, b in pairs if not a["follows_before"]]
            else:
                pairs_mfr = pairs
            layer, head = (int(x) for x in about.split("."))
            entries.append({
                "head": [layer, head],
                "alone": measure(sets.get("alone", [])),
                "without": measure(without),
                "marginal": {"mfr": mean_interval([float(a["follows_after"]) - float(b["follows_after"]) for a, b in pairs_mfr], n_boot, seed),
                             "log_odds": mean_interval([a["log_odds_after"] - b["log_odds_after"] for a, b in pairs], n_boot, seed)},
            })
        if entries:
            out[cond] = entries
    return out
