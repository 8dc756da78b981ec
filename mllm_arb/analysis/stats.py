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
