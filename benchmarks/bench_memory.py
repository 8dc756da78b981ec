"""Peak tensor memory of an exact head scan (batched, prefix reuse) vs one plain forward pass at the same
batch size. Target ≤ 1.5×."""

from __future__ import annotations

from mllm_arb.analysis.heads import Removal, ablation_scores

from .common import BATCH_SIZES, MODELS, Result, header, peak_bytes, prepared, report

TARGET = 1.5


def run(model: str) -> Result:
    adapter, batch_size = MODELS[model](), BATCH_SIZES[model]
    preps = prepared(adapter, batch_size, batch_size)[:1]
    plain = peak_bytes(lambda: adapter.last_logits(preps[0].batch))
    scan = peak_bytes(lambda: ablation_scores(adapter, preps, Removal("zero", "all")))
    ratio = scan / plain
    return report(Result("head-scan memory", adapter.name, len(preps[0].batch), "peak scan / peak plain forward", ratio,
                         f"≤ {TARGET}", ratio <= TARGET, f"plain {plain / 2**20:.1f} MiB, scan {scan / 2**20:.1f} MiB"))


if __name__ == "__main__":
    header("peak memory: head scan vs plain forward")
    for name in MODELS:
        run(name)
