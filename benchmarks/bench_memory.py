"""Peak tensor memory of an exact head scan (batched, prefix reuse) vs one plain forward pass at the same
batch size, for heads removed at every position and at the last one (a last-position sweep, which also
holds one layer's keys and values from a plain walk). Target ≤ 1.5×. Also the knockout sweep (the study's edges, every window),
for which the issue sets no target."""

from __future__ import annotations

from mllm_arb.interventions import default_window_size
from mllm_arb.pipeline.analyze.flow import STUDY_EDGES, KnockoutPlan, knockout_rows
from mllm_arb.pipeline.heads.methods import Removal, ablation_scores

from .common import BATCH_SIZES, MODELS, Result, header, peak_bytes, prepared, report, samples

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
    n_layers = adapter.parts.n_layers
    plan = KnockoutPlan(edges=STUDY_EDGES, window=default_window_size(n_layers), n_layers=n_layers)
    rows = samples(batch_size)[:batch_size]  # the batch the head scans used
    sweep = peak_bytes(lambda: knockout_rows(adapter, rows, plan, batch_size))
    out.append(report(Result("knockout-sweep memory", adapter.name, len(rows), "peak sweep / peak plain forward", sweep / plain,
                             "none set", None, f"plain {plain / 2**20:.1f} MiB, sweep {sweep / 2**20:.1f} MiB")))
    return out


if __name__ == "__main__":
    header("peak memory: head scan vs plain forward")
    for name in MODELS:
        run(name)
