"""Score what the analyses report against a model's ground truth (pure functions over results dicts).

- knockout: every (setting, edge, window) cell is *planted* when the window cuts layers of a planted
  edge that governs the setting, and *detected* when its mean change in log-odds is significant (95%
  CI excludes 0) and at least `min_effect` in size; a confusion table counts the four cases;
- heads: per ranking method, AUROC of the scores against the planted heads, precision and recall of
  the top 5% and of the top k (k = the number of planted heads), and each planted head's rank;
- the study's findings as `analyze` decided them, anchor agreement by layer, and blocking the
  selected heads against random sets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ...core.ground_truth import GroundTruth
from ...core.verdicts import verdict_of
from ...interventions.knockout import layer_window
from ..heads.methods import rank

#: the most a closed edge's knockout may move the mean log-odds (the plant's "no bypass" check)
MIN_EFFECT = 0.1


def _governs(edge_governs: str, setting: str) -> bool:
    return edge_governs in ("both", setting)


def cell_is_planted(truth: GroundTruth, setting: str, edge: str, layers: Sequence[int]) -> bool:
    return any(e.name == edge and _governs(e.governs, setting) and set(e.layers) & set(layers) for e in truth.planted_edges())


_CELL = {(True, True): "planted_detected", (True, False): "planted_missed", (False, True): "other_detected", (False, False): "other_quiet"}


def knockout_scores(knockout: Mapping, truth: GroundTruth, window: int, min_effect: float = MIN_EFFECT) -> dict:
    cells, confusion = [], {"planted_detected": 0, "planted_missed": 0, "other_detected": 0, "other_quiet": 0}
    for setting, edges in knockout.items():
        for edge, points in edges.items():
            for p in points:
                layers = layer_window(int(p["center"]), window, truth.n_layers)
                planted = cell_is_planted(truth, setting, edge, layers)
                significant = p["ci_high"] < 0 or p["ci_low"] > 0
                detected = significant and abs(p["mean"]) >= min_effect
                confusion[_CELL[planted, detected]] += 1
                cells.append({"setting": setting, "edge": edge, "center": int(p["center"]), "layers": layers, "planted": planted,
                              "mean": p["mean"], "ci": [p["ci_low"], p["ci_high"]], "significant": significant, "detected": detected})
    n_planted = confusion["planted_detected"] + confusion["planted_missed"]
    n_other = confusion["other_detected"] + confusion["other_quiet"]
    rates = {
        "true_positive_rate": confusion["planted_detected"] / n_planted if n_planted else math.nan,
        "false_positive_rate": confusion["other_detected"] / n_other if n_other else math.nan,
    }
    return {"min_effect": min_effect, "window": window, "confusion": confusion, **rates, "peaks": _peaks(knockout, truth), "cells": cells}


def _peaks(knockout: Mapping, truth: GroundTruth) -> list[dict]:
    """Each planted edge, in each setting it governs: where its knockout's most negative window sits."""
    out = []
    for e in truth.planted_edges():
        for setting, edges in knockout.items():
            points = edges.get(e.name)
            if not points or not _governs(e.governs, setting):
                continue
            low = min(points, key=lambda p: p["mean"])
            out.append({"edge": e.name, "setting": setting, "planted_layers": list(e.layers), "peak_layer": int(low["center"]),
                        "peak_mean": low["mean"], "inside": int(low["center"]) in e.layers})
    return out


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """The probability that a random positive outscores a random negative (ties count half)."""
    s = np.asarray(scores, dtype=float)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    greater = (s[pos][:, None] > s[~pos][None, :]).sum()
    ties = (s[pos][:, None] == s[~pos][None, :]).sum()
    return float((greater + 0.5 * ties) / (n_pos * n_neg))


def head_scores(matrix: Sequence[Sequence[float]], truth: GroundTruth, n_top: int) -> dict:
    """How one method's head scores (highest = most important) recover the planted heads."""
    planted = set(truth.planted_heads)
    order = rank(matrix)
    position = {(l, h): i + 1 for i, (l, h, _) in enumerate(order)}
    flat = [(l, h, v) for l, h, v in order]
    k = len(planted)

    def at(n: int) -> dict:
        top = {(l, h) for l, h, _ in flat[:n]}
        hits = len(top & planted)
        return {"n": n, "hits": hits, "precision": hits / n if n else math.nan, "recall": hits / k if k else math.nan}

    return {
        "auroc": auroc([v for _, _, v in flat], [(l, h) in planted for l, h, _ in flat]),
        "top_fraction": at(n_top),
        "top_planted_count": at(k),
        "planted_ranks": {f"L{l}H{h}": position[(l, h)] for l, h in truth.planted_heads},
        "top": [[l, h] for l, h, _ in flat[: max(n_top, k)]],
    }


def heads_scores(scores: Mapping[str, Mapping], truth: GroundTruth, n_top: int, rank_by: str = "pooled") -> dict:
    return {method: head_scores(s[rank_by], truth, n_top) for method, s in scores.items()}


def best_method(per_method: Mapping[str, dict]) -> str:
    """The method that recovers the planted heads best: top-k recall, then AUROC."""
    return max(per_method, key=lambda m: (per_method[m]["top_planted_count"]["recall"], per_method[m]["auroc"]))


def findings_summary(findings: Mapping) -> dict:
    return {key: {"claim": f["claim"], "holds": f["holds"], "verdict": verdict_of(f), "value": f["value"],
                  "interval": f.get("interval")} for key, f in findings.items()}


def blocking_summary(blocking: Mapping, heads: Sequence[Sequence[int]], truth: GroundTruth) -> dict:
    """Blocking the selected heads: MFR before, with them blocked, with random sets, per setting and control."""
    out: dict = {"heads": [list(h) for h in heads], "planted_among_them": sum(tuple(h) in set(truth.planted_heads) for h in heads)}
    rows = {}
    for name, entry in blocking.items():
        row = {"kind": entry["kind"], "before": entry["before"]["mfr"]["mean"], "top": entry["top"]["mfr"]["mean"],
               "top_ci": [entry["top"]["mfr"]["ci_low"], entry["top"]["mfr"]["ci_high"]]}
        if "random" in entry:
            row["random"] = entry["random"]["mfr"]["mean"]
            row["separated"] = entry["separation"]["mfr"]["separated"]
        rows[name] = row
    out["mfr"] = rows
    return out
