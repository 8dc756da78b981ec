"""Each claim of the reference study, checked on one run with the number that decides it, that number's
95% bootstrap interval over samples, and a three-way verdict (core/verdicts.py): "holds" or "does not
hold" when the interval lies wholly on one side of the threshold, "undecided" when it straddles it.

Thresholds come from the config (`analysis.findings`) so a reader can see, and change, what "clear"
and "negligible" mean. A claim that cannot be checked on this run (no failed samples, an edge not
analysed) is "not checkable" rather than guessed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from ...core import verdicts as V

#: which setting each transfer edge is read under: the instruction names that source
TRANSFER = {"context->instruction": "text_following", "image->instruction": "vision_following"}


def _late(n_layers: int) -> range:
    """The last third of the layers."""
    return range(n_layers - max(1, n_layers // 3), n_layers)


def _finding(claim: str, value, interval, threshold, verdict: str, **extra) -> dict:
    return {"claim": claim, "value": value, "interval": list(interval), "threshold": threshold, "verdict": verdict,
            "holds": V.holds_of(verdict), **extra}


def transfer_peak(knockout: Mapping, threshold: float, n_layers: int) -> dict:
    """(a) image/context → instruction knockout has a clear negative peak, and at which depth. Per edge:
    holds when the deepest window's interval lies wholly at or below -threshold, fails when no window's
    interval reaches it; the claim needs both edges."""
    parts, per_edge = [], []
    for edge, setting in TRANSFER.items():
        points = knockout.get(setting, {}).get(edge)
        if not points:
            continue
        low = min(points, key=lambda p: p["mean"])
        verdict = V.below(low["ci_low"], low["ci_high"], -threshold)
        if verdict != V.HOLDS:  # another window's interval may still reach the threshold: then undecided
            verdict = V.FAILS if all(V.below(p["ci_low"], p["ci_high"], -threshold) == V.FAILS for p in points) else V.UNDECIDED
        per_edge.append(verdict)
        parts.append(
            {
                "edge": edge,
                "setting": setting,
                "peak_delta_log_odds": low["mean"],
                "ci": [low["ci_low"], low["ci_high"]],
                "peak_layer": low["center"],
                "relative_depth": low["center"] / max(n_layers - 1, 1),
                "mfr_under_knockout": low["mfr_after"],
                "mfr_before": low["mfr_before"],
                "verdict": verdict,
                "clear": verdict == V.HOLDS,
            }
        )
    deciding = min(parts, key=lambda p: p["peak_delta_log_odds"], default=None)
    return _finding(
        "image/context -> instruction knockout has a clear negative peak",
        deciding["peak_delta_log_odds"] if deciding else math.nan,
        deciding["ci"] if deciding else [None, None],
        -threshold, V.all_of(per_edge), measured=parts,
    )


def direct_image_negligible(knockout: Mapping, threshold: float, cumulative: Mapping | None = None) -> dict:
    """(b) blocking image → last directly changes little anywhere: every window's interval (and, with
    cumulative spans, the interval of blocking it in every layer at once) lies within ±threshold."""
    points = []
    for setting, edges in knockout.items():
        points += [(setting, f"window at layer {p['center']}", p) for p in edges.get("image->last", [])]
    for setting, edges in (cumulative or {}).items():
        whole = [p for p in edges.get("image->last", {}).get("from", []) if p["layer"] == 0]
        points += [(setting, "every layer", p) for p in whole]
    if not points:
        return _finding("direct image -> last knockout is negligible", math.nan, [None, None], threshold, V.UNCHECKED)
    verdict = V.all_of(V.within(p["ci_low"], p["ci_high"], threshold) for _, _, p in points)
    setting, where, worst = max(points, key=lambda t: abs(t[2]["mean"]))
    return _finding("direct image -> last knockout is negligible", worst["mean"], [worst["ci_low"], worst["ci_high"]], threshold,
                    verdict, at={"setting": setting, "layers": where, "layer": worst.get("center", worst.get("layer")),
                                 "ci": [worst["ci_low"], worst["ci_high"]]})


def _per_sample(lens_rows: Sequence[Mapping]) -> dict[tuple[str, str], list[Mapping]]:
    by: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for r in lens_rows:
        by[(r["setting"], r["item_id"])].append(r)
    return by


def late_mlp_inertia(lens_rows: Sequence[Mapping], n_layers: int, n_boot: int, seed: int) -> dict:
    """(c) on failed samples, late MLPs push toward the competitor while attention pushes toward following
    (per failed sample: the following-minus-competitor contributions at the last position, summed over
    the last third of layers; pooled over settings). The deciding number is the margin
    min(attention, -MLP) of the means: the claim holds when its interval lies above 0."""
    late = set(_late(n_layers))
    claim = "late MLPs push toward the competitor on failed samples while attention pushes toward following"
    pairs = []
    for rows in _per_sample(lens_rows).values():
        if rows[0]["follows"] or "last_attn_following" not in rows[0]:
            continue
        rows = [r for r in rows if r["layer"] in late]
        pairs.append((sum(r["last_attn_following"] - r["last_attn_competitor"] for r in rows),
                      sum(r["last_mlp_following"] - r["last_mlp_competitor"] for r in rows)))
    if not pairs:
        return _finding(claim, math.nan, [None, None], 0.0, V.UNCHECKED, note="no failed samples")
    x = np.asarray(pairs)
    boot = {"n_boot": n_boot, "seed": seed}
    margin, lo, hi = V.bootstrap_statistic([x], lambda m: np.minimum(m[0][:, 0], -m[0][:, 1]), **boot)
    attn = V.bootstrap_statistic([x[:, 0]], lambda m: m[0], **boot)
    mlp = V.bootstrap_statistic([x[:, 1]], lambda m: m[0], **boot)
    return _finding(claim, {"late_attn_difference": attn[0], "late_mlp_difference": mlp[0], "margin": margin}, [lo, hi], 0.0,
                    V.above(lo, hi, 0.0), interval_of="margin", layers=sorted(late), n_failed=len(pairs),
                    intervals={"late_attn_difference": list(attn[1:]), "late_mlp_difference": list(mlp[1:])})


def anchor_agreement(lens_rows: Sequence[Mapping], threshold: float, n_layers: int, n_boot: int, seed: int) -> dict:
    """(d) in the last third of layers, the lens decision at the instruction tokens agrees with the model:
    per sample, the share of late layers that agree; the deciding number is the lowest setting's mean."""
    late = set(_late(n_layers))
    claim = "anchor decision agreement in the last third of layers"
    per_setting: dict[str, list[float]] = defaultdict(list)
    for (setting, _), rows in _per_sample(lens_rows).items():
        if "instruction_lens_log_odds" not in rows[0]:
            continue
        agree = [(r["instruction_lens_log_odds"] > 0) == r["follows"] for r in rows if r["layer"] in late]
        per_setting[setting].append(float(np.mean(agree)))
    if not per_setting:
        return _finding(claim, math.nan, [None, None], threshold, V.UNCHECKED)
    names = list(per_setting)
    value, lo, hi = V.bootstrap_statistic([per_setting[s] for s in names], lambda m: np.min(np.stack(m), axis=0),
                                          n_boot=n_boot, seed=seed)
    return _finding(claim, value, [lo, hi], threshold, V.above(lo, hi, threshold),
                    per_setting={s: float(np.mean(per_setting[s])) for s in names}, layers=sorted(late))


def check_findings(knockout: Mapping, lens_rows: Sequence[Mapping] | None, n_layers: int, thresholds: Mapping,
                   cumulative: Mapping | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Findings (a)–(d) from the knockout curves and the lens's per-sample rows (None: lens not run)."""
    rows = lens_rows or []
    return {
        "a_transfer_peak": transfer_peak(knockout, thresholds["transfer_peak"], n_layers),
        "b_direct_image_negligible": direct_image_negligible(knockout, thresholds["direct_negligible"], cumulative),
        "c_late_mlp_inertia": late_mlp_inertia(rows, n_layers, n_boot, seed),
        "d_anchor_agreement": anchor_agreement(rows, thresholds["agreement"], n_layers, n_boot, seed),
    }
