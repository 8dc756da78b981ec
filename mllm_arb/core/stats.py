"""Small statistics helpers: bootstrap intervals for ratios and means."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; (nan, nan) for no values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summarise(values: Sequence[float], **kw) -> dict:
    x = np.asarray(values, dtype=float)
    lo, hi = bootstrap_ci(x, **kw)
    return {"mean": float(x.mean()) if x.size else float("nan"), "ci_low": lo, "ci_high": hi, "n": int(x.size)}


def mean_interval(values: Sequence[float], n_boot: int, seed: int) -> dict:
    """`summarise`, with None entries (JSON null, not NaN) when there are no values."""
    if len(values) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    return summarise(values, n_boot=n_boot, seed=seed)


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
