"""Blocking and amplification arms of one batch (the top 5% of heads, 20 random sets of as many heads,
4 amplification factors): all from one recorded pass (`arm_log_odds`) vs one full forward per arm
(`fast=False`), heads edited at every position and at the last one. The issue sets no target for it:
it shows what `ablate` and `amplify` gain."""

from __future__ import annotations

import math

from mllm_arb.pipeline.heads.arms import Arm, arm_log_odds, random_sets
from mllm_arb.pipeline.heads.methods import Removal

from .common import BATCH_SIZES, MODELS, Result, header, interleaved, prepared, report

ALPHAS = (2.0, 3.0, 5.0, 8.0)


def run(model: str, repeat: int = 2) -> list[Result]:
    adapter, batch_size = MODELS[model](), BATCH_SIZES[model]
    prep = prepared(adapter, batch_size, batch_size)[0]
    n_layers, n_heads = adapter.parts.n_layers, adapter.parts.n_heads
    n = math.ceil(0.05 * n_layers * n_heads)
    # a fixed "top" set reaching layer 0, as the organism's does; the random sets as `ablate` draws them
    top = tuple((layer % n_layers, (3 * layer) % n_heads) for layer in range(n))
    arms = [Arm("headline", "top", top, 0.0), *(Arm("headline", "random", hs, 0.0, seed=s) for s, hs in
            enumerate(random_sets(adapter.parts.heads(), n, 20, 0))), *(Arm("amplify", "top", top, a) for a in ALPHAS)]  # fmt: skip
    out = []
    for positions in ("all", "last"):
        removal = Removal("zero", positions)
        t = interleaved({"naive": lambda: arm_log_odds(adapter, prep, arms, removal, fast=False),
                         "fast": lambda: arm_log_odds(adapter, prep, arms, removal)}, repeat)  # fmt: skip
        ratio = t["naive"] / t["fast"]
        out.append(report(Result(f"blocking/amplification arms ({positions} positions)", adapter.name, len(prep.batch),
                                 "one forward per arm / one recorded pass", ratio, "none set", None,
                                 f"{len(arms)} arms: naive {t['naive']:.2f} s, fast {t['fast']:.2f} s")))
    return out


if __name__ == "__main__":
    header("blocking and amplification arms: one recorded pass vs one forward per arm")
    for name in MODELS:
        run(name)
