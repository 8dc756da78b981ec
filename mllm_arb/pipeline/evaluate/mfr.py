"""Behaviour: score every sample and report the modality-following ratio per condition (§3)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ...core.results import ConditionMFR
from ...core.scoring import ScoredSample
from ...core.stats import summarise


def mfr_table(rows: Sequence[ScoredSample], n_boot: int = 1000, seed: int = 0) -> dict[str, ConditionMFR]:
    """MFR (share following) with a bootstrap interval, mean log-odds, and generation split, per condition
    and per condition × task."""
    groups: dict[str, list[ScoredSample]] = defaultdict(list)
    for r in rows:
        groups[r.condition].append(r)
        groups[f"{r.condition}/{r.task}"].append(r)
    table = {}
    for key, rs in sorted(groups.items()):
        entry = {"mfr": summarise([float(r.follows) for r in rs], n_boot=n_boot, seed=seed)}
        entry["log_odds"] = summarise([r.log_odds for r in rs], n_boot=n_boot, seed=seed)
        if rs[0].generated_class is not None:
            entry["generation"] = {c: sum(r.generated_class == c for r in rs) / len(rs) for c in ("following", "competitor", "other")}
        table[key] = entry
    return table
