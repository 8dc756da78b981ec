"""Attribution ranking (one forward and backward pass per batch) vs exact ranking (the naive loop and the
batched exact head scan), over a ranking split of several batches: time, and overlap of the top 5% of heads
by pooled score. Also the hybrid ranking (exact at the last position, attribution elsewhere) and the hybrid
estimate with exact verification of its candidates (`verified`). Target ≥ 20× faster with ≥ 75% overlap. Only the
trained organism's overlap says something about ranking quality."""

from __future__ import annotations

import math
import time

from mllm_arb.pipeline.heads.methods import (
    Removal,
    ablation_scores,
    attribution_scores,
    hybrid_scores,
    rank,
    score_matrices,
    verified_scores,
)

from .common import BATCH_SIZES, MODELS, Result, header, prepared, report, synced

SPEED, OVERLAP = 20.0, 0.75


def _clock(fn):
    start = time.perf_counter()
    out = synced(fn)
    return out, time.perf_counter() - start


def top(preps, scores, n: int) -> set:
    return {(l, h) for l, h, _ in rank(score_matrices(preps, scores)["pooled"])[:n]}


N_ITEMS = {"organism": 16, "large": 6}  # conflict items, each in two settings: the ranking split


def run(model: str) -> list[Result]:
    adapter, batch_size = MODELS[model](), BATCH_SIZES[model]
    preps = prepared(adapter, N_ITEMS[model], batch_size)
    removal = Removal("zero", "all")
    n = math.ceil(0.05 * adapter.parts.n_layers * adapter.parts.n_heads)
    attribution_scores(adapter, preps[:1], removal)  # warm-up (autograd's first call)
    hybrid_scores(adapter, preps[:1], removal)
    exact, t_exact = _clock(lambda: ablation_scores(adapter, preps, removal))
    _, t_naive = _clock(lambda: ablation_scores(adapter, preps, removal, fast=False))
    attrib, t_attrib = _clock(lambda: attribution_scores(adapter, preps, removal))
    hybrid, t_hybrid = _clock(lambda: hybrid_scores(adapter, preps, removal))
    verified, t_verified = _clock(lambda: verified_scores(adapter, preps, removal))
    truth = top(preps, exact, n)
    out = []
    runs = (("attribution", "naive", attrib, t_attrib, t_naive), ("attribution", "batched", attrib, t_attrib, t_exact),
            ("hybrid", "naive", hybrid, t_hybrid, t_naive), ("hybrid", "batched", hybrid, t_hybrid, t_exact),
            ("verified", "batched", verified, t_verified, t_exact))  # fmt: skip
    for method, baseline, scores, t, t_base in runs:
        ratio, overlap = t_base / t, len(top(preps, scores, n) & truth) / n
        out.append(report(Result(f"{method} ranking", adapter.name, batch_size, f"exact ({baseline}) / {method} time", ratio,
                                 f"≥ {SPEED:g}× and top-5% overlap ≥ {OVERLAP:.0%}", ratio >= SPEED and overlap >= OVERLAP,
                                 f"top-{n} overlap {overlap:.0%}; {sum(len(p.batch) for p in preps)} samples: "
                                 f"exact ({baseline}) {t_base:.2f} s, {method} {t:.3f} s")))
    return out


if __name__ == "__main__":
    header("attribution ranking vs exact ranking")
    for name in MODELS:
        run(name)
