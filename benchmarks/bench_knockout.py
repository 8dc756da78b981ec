"""Full per-layer knockout sweep (the study's 8 edges × every window centre, default window): prefix
reuse with stacked variants (`knockout_rows`) vs full recompute of every pass (`fast=False`), on one
batch. Target ≥ 1.7× faster."""

from __future__ import annotations

from mllm_arb.interventions import default_window_size
from mllm_arb.pipeline.analyze.flow import STUDY_EDGES, KnockoutPlan, knockout_rows

from .common import BATCH_SIZES, MODELS, Result, header, interleaved, report, samples

TARGET = 1.7


def run(model: str, repeat: int = 2) -> Result:
    adapter, batch_size = MODELS[model](), BATCH_SIZES[model]
    n_layers = adapter.parts.n_layers
    plan = KnockoutPlan(edges=STUDY_EDGES, window=default_window_size(n_layers), n_layers=n_layers)
    rows = samples(batch_size)[:batch_size]  # one setting: one batch
    knockout_rows(adapter, rows, plan, batch_size)  # warm-up
    t = interleaved({"naive": lambda: knockout_rows(adapter, rows, plan, batch_size, fast=False),
                     "fast": lambda: knockout_rows(adapter, rows, plan, batch_size)}, repeat, warmup=False)  # fmt: skip
    ratio = t["naive"] / t["fast"]
    return report(Result("knockout sweep", adapter.name, len(rows), "full recompute / prefix reuse time", ratio, f"≥ {TARGET}",
                         ratio >= TARGET, f"{len(STUDY_EDGES)} edges × {n_layers} windows of {plan.window}: "
                         f"recompute {t['naive']:.2f} s, prefix reuse {t['fast']:.2f} s"))


if __name__ == "__main__":
    header("per-layer knockout sweep: prefix reuse vs full recompute")
    for name in MODELS:
        run(name)
