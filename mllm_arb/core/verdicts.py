"""Three-way verdicts for the study's claims: a claim *holds* when the 95% interval of the number that
decides it lies wholly on the claim's side of the threshold, *does not hold* when it lies wholly on the
other side, and is *undecided* when the interval straddles the threshold (more samples might settle it).
A claim this run could not check at all is *not checkable*.

`holds` (True / False / None) stays beside the verdict for readers that want a boolean: None covers both
"undecided" and "not checkable"; the verdict tells them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

HOLDS, FAILS, UNDECIDED, UNCHECKED = "holds", "does not hold", "undecided", "not checkable"
VERDICTS = (HOLDS, FAILS, UNDECIDED, UNCHECKED)


def _finite(*xs) -> bool:
    return all(x is not None and np.isfinite(x) for x in xs)


def above(lo: float | None, hi: float | None, threshold: float, threshold_high: float | None = None) -> str:
    """The claim "the number exceeds `threshold`" given its interval [lo, hi] (an interval that only
    touches the threshold from below cannot exceed it: it fails). The threshold may itself be an interval
    [threshold, threshold_high], another quantity's: the claim then needs the two intervals apart."""
    top = threshold if threshold_high is None else threshold_high
    if not _finite(lo, hi, threshold, top):
        return UNCHECKED
    if lo > top:
        return HOLDS
    if hi <= threshold:
        return FAILS
    return UNDECIDED


def below(lo: float | None, hi: float | None, threshold: float, threshold_high: float | None = None) -> str:
    """The claim "the number lies under `threshold`" (or under the interval [threshold, threshold_high])."""
    if not _finite(lo, hi):
        return UNCHECKED
    top = threshold if threshold_high is None else threshold_high
    return above(-hi, -lo, -top, -threshold)


def within(lo: float | None, hi: float | None, bound: float) -> str:
    """The claim "|number| <= bound": holds when the interval lies inside [-bound, bound], fails when it
    lies wholly outside it."""
    if not _finite(lo, hi):
        return UNCHECKED
    if -bound <= lo and hi <= bound:
        return HOLDS
    if lo > bound or hi < -bound:
        return FAILS
    return UNDECIDED


def all_of(verdicts: Iterable[str]) -> str:
    """A claim made of parts that must all hold: one failing part fails it, one undecided part (and none
    failing) leaves it undecided; parts that could not be checked are skipped."""
    vs = [v for v in verdicts if v != UNCHECKED]
    if not vs:
        return UNCHECKED
    if FAILS in vs:
        return FAILS
    return UNDECIDED if UNDECIDED in vs else HOLDS


def any_of(verdicts: Iterable[str]) -> str:
    """A claim that holds when any part holds (a peak at some layer): fails only when every part fails
    (`all_of` of the negated parts, negated)."""
    flip = {HOLDS: FAILS, FAILS: HOLDS}
    negated = all_of(flip.get(v, v) for v in verdicts)
    return flip.get(negated, negated)


def holds_of(verdict: str) -> bool | None:
    return {HOLDS: True, FAILS: False}.get(verdict)


def verdict_of(finding: dict) -> str:
    """A finding's verdict, also for findings.json written before verdicts existed (holds only)."""
    if finding.get("verdict") in VERDICTS:
        return finding["verdict"]
    return {True: HOLDS, False: FAILS}.get(finding.get("holds"), UNCHECKED)


def bootstrap_statistic(groups: Sequence[np.ndarray], statistic: Callable[[list[np.ndarray]], np.ndarray],
                        n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(value, low, high): `statistic` of the groups' means and its percentile bootstrap interval.

    Each group (`[n]` values, or `[n, k]` rows kept together) is resampled on its own; `statistic` gets
    one array of means per group, shaped `[B]` or `[B, k]`, and returns `[B]`. The value is the
    statistic of the full samples' means. Empty groups give NaNs."""
    arrays = [np.asarray(g, dtype=float) for g in groups]
    if not arrays or any(a.shape[0] == 0 for a in arrays):
        return float("nan"), float("nan"), float("nan")
    value = float(statistic([a.mean(axis=0)[None] for a in arrays])[0])
    rng = np.random.default_rng(seed)
    means = [a[rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))].mean(axis=1) for a in arrays]
    lo, hi = np.quantile(statistic(means), [(1 - level) / 2, 1 - (1 - level) / 2])
    return value, float(lo), float(hi)


# ------------------------------------------------------------------------------------ head claims
def _interval(e: dict | None) -> tuple[float | None, float | None]:
    e = e or {}
    return e.get("ci_low"), e.get("ci_high")


def blocking_finding(blocking: dict | None) -> dict | None:
    """(e) blocking the top heads lowers following more than random sets of the same size, from ablate's
    pooled blocking entry: per metric (MFR, log-odds), the top set's mean change against the random
    sets' mean change; holds when either metric's intervals separate downward, fails when both lie
    wholly above (the top set hurts less), else undecided. None when the run had no random sets."""
    if not blocking or "random" not in blocking:
        return None
    top, rnd = blocking["top"], blocking["random"]
    per_metric = {}
    for metric in ("mfr", "log_odds"):
        per_metric[metric] = below(*_interval(top["change"][metric]), *_interval(rnd["change"][metric]))
    verdict = any_of(per_metric.values())
    change = top["change"]["mfr"]
    return {
        "claim": "blocking the top heads lowers following more than random heads of the same size",
        "value": {"relative_mfr_drop": top.get("relative_mfr_drop"), "top_mfr_change": change.get("mean"),
                  "random_mfr_change": rnd["change"]["mfr"].get("mean"), "top_log_odds_change": top["change"]["log_odds"].get("mean"),
                  "random_log_odds_change": rnd["change"]["log_odds"].get("mean")},
        "interval": list(_interval(change)),
        "interval_of": "top_mfr_change",
        "threshold": "top interval below random",
        "per_metric": per_metric,
        "verdict": verdict,
        "holds": holds_of(verdict),
    }


def recovery_finding(pooled: dict | None, random: dict | None) -> dict | None:
    """(f) amplifying the top heads at the best α recovers more failed samples than random sets: holds when
    the top set's recovery interval lies wholly above the random sets' (the interval of their mean),
    fails when wholly below, else undecided; not checkable without failed samples."""
    if not pooled:
        return None
    rec, rnd = pooled["recovery"], (random or {}).get("recovery") or {}
    claim = "amplifying the top heads recovers failed samples beyond random heads"
    value = {"recovery": rec.get("mean"), "random_recovery": rnd.get("mean"), "harm": pooled["harm"].get("mean")}
    if not pooled["n_failed"]:
        return {"claim": claim, "value": value, "interval": [None, None], "threshold": "top interval above random",
                "verdict": UNCHECKED, "holds": None, "note": "no failed samples to recover"}
    (t_lo, t_hi), (r_lo, r_hi) = _interval(rec), _interval(rnd)
    verdict = above(t_lo, t_hi, r_lo, r_hi)
    return {"claim": claim, "value": value, "interval": [t_lo, t_hi], "interval_of": "recovery", "threshold": "top interval above random",
            "random_interval": [r_lo, r_hi], "n_failed": pooled["n_failed"], "verdict": verdict, "holds": holds_of(verdict)}
