"""Each claim of the reference study, checked on one run with the number that decides it.

Thresholds come from the config (`analysis.findings`) so a reader can see, and change, what "clear"
and "negligible" mean. A claim that cannot be checked on this run (no failed samples, an edge not
analysed) says so with `holds: null` rather than guessing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: which setting each transfer edge is read under: the instruction names that source
TRANSFER = {"context->instruction": "text_following", "image->instruction": "vision_following"}


def _late(n_layers: int) -> range:
    """The last third of the layers."""
    return range(n_layers - max(1, n_layers // 3), n_layers)


def transfer_peak(knockout: Mapping, threshold: float, n_layers: int) -> dict:
    """(a) image/context → instruction knockout has a clear negative peak, and at which depth."""
    parts, holds = [], []
    for edge, setting in TRANSFER.items():
        points = knockout.get(setting, {}).get(edge)
        if not points:
            continue
        low = min(points, key=lambda p: p["mean"])
        clear = low["mean"] <= -threshold and low["ci_high"] < 0
        holds.append(clear)
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
                "clear": clear,
            }
        )
    return {
        "claim": "image/context -> instruction knockout has a clear negative peak",
        "measured": parts,
        "value": min((p["peak_delta_log_odds"] for p in parts), default=math.nan),
        "threshold": -threshold,
        "holds": all(holds) if holds else None,
    }


def direct_image_negligible(knockout: Mapping, threshold: float) -> dict:
    """(b) blocking image → last directly changes little anywhere."""
    worst = None
    for setting, edges in knockout.items():
        for p in edges.get("image->last", []):
            if worst is None or abs(p["mean"]) > abs(worst[1]["mean"]):
                worst = (setting, p)
    if worst is None:
        return {"claim": "direct image -> last knockout is negligible", "value": math.nan, "threshold": threshold, "holds": None}
    setting, p = worst
    return {
        "claim": "direct image -> last knockout is negligible",
        "value": p["mean"],
        "at": {"setting": setting, "layer": p["center"], "ci": [p["ci_low"], p["ci_high"]]},
        "threshold": threshold,
        "holds": abs(p["mean"]) <= threshold,
    }


def late_mlp_inertia(components: Mapping, n_layers: int) -> dict:
    """(c) on failed samples, late MLPs push toward the competitor while attention pushes toward following
    (summed over the last third of layers, at the last position, pooled over settings by sample count)."""
    late = list(_late(n_layers))
    attn_sum = mlp_sum = 0.0
    n_total = 0
    for setting, sites in components.items():
        failed = sites.get("last", {}).get("failed")
        if not failed or failed["n"] == 0:
            continue
        n = failed["n"]
        attn_sum += n * sum(failed["attn_difference"][l] for l in late)
        mlp_sum += n * sum(failed["mlp_difference"][l] for l in late)
        n_total += n
    if n_total == 0:
        return {"claim": "late MLPs push toward the competitor on failed samples while attention pushes toward following",
                "value": math.nan, "threshold": 0.0, "holds": None, "note": "no failed samples"}
    attn, mlp = attn_sum / n_total, mlp_sum / n_total
    return {
        "claim": "late MLPs push toward the competitor on failed samples while attention pushes toward following",
        "value": {"late_attn_difference": attn, "late_mlp_difference": mlp},
        "layers": late,
        "n_failed": n_total,
        "threshold": 0.0,
        "holds": mlp < 0 < attn,
    }


def anchor_agreement(agreement: Mapping, threshold: float, n_layers: int) -> dict:
    """(d) in the last third of layers, the lens decision at the instruction tokens agrees with the model."""
    late = list(_late(n_layers))
    per_setting = {s: float(sum(v[l] for l in late) / len(late)) for s, v in agreement.items()}
    if not per_setting:
        return {"claim": "anchor decision agreement in the last third of layers", "value": math.nan, "threshold": threshold, "holds": None}
    value = min(per_setting.values())
    return {
        "claim": "anchor decision agreement in the last third of layers",
        "value": value,
        "per_setting": per_setting,
        "layers": late,
        "threshold": threshold,
        "holds": value >= threshold,
    }


def check_findings(knockout: Mapping, lens: Mapping, n_layers: int, thresholds: Mapping) -> dict:
    return {
        "a_transfer_peak": transfer_peak(knockout, thresholds["transfer_peak"], n_layers),
        "b_direct_image_negligible": direct_image_negligible(knockout, thresholds["direct_negligible"]),
        "c_late_mlp_inertia": late_mlp_inertia(lens["components"], n_layers),
        "d_anchor_agreement": anchor_agreement(lens["agreement"], thresholds["agreement"], n_layers),
    }
