"""Peak tensor memory of an exact head scan (batched, prefix reuse) vs one plain forward pass at the same
batch size, for heads removed at every position and at the last one (a suffix resume, which also keeps
every layer's keys and values). Target ≤ 1.5×."""

from __future__ import annotations

from mllm_arb.analysis.heads import Removal, ablation_scores

from .common import BATCH_SIZES, MODELS, Result, header, peak_bytes, prepared, report

TARGET = 1.5


def run(model: str) -> list[Result]:
    adapter, batch_size = MODELS[model](), BATCH_SIZES[model]
    preps = prepared(adapter, batch_size, batch_size)[:1]
    plain = peak_bytes(lambda: adapter.last_logits(preps[0].batch))
    out = []
    for positions in ("all", "last"):
        scan = peak_bytes(lambda: ablation_scores(adapter, preps, Removal("zero", positions)))
        ratio = scan / plain
        out.append(report(Result(f"head-scan memory ({positions} positions)", adapter.name, len(preps[0].batch),
                                 "peak scan / peak plain forward", ratio, f"≤ {TARGET}", ratio <= TARGET,
                                 f"plain {plain / 2**20:.1f} MiB, scan {scan / 2**20:.1f} MiB")))
    return out


if __name__ == "__main__":
    header("peak memory: head scan vs plain forward")
    for name in MODELS:
        run(name)
