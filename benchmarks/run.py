"""`make bench`: every benchmark on the organism and on the larger random-weight model, then a summary
table (Markdown, the one docs/performance.md shows). Each line says the measured ratio, the target and
PASS or MISS. Benchmarks are measurements, not tests: a MISS does not fail the run."""

from __future__ import annotations

import sys
import time

from . import bench_arms, bench_attribution, bench_head_scan, bench_hooks, bench_knockout, bench_memory
from .common import MODELS, RESULTS_FILE, describe, header, machine

BENCHMARKS = (bench_hooks, bench_head_scan, bench_knockout, bench_attribution, bench_memory, bench_arms)


def table(results) -> str:
    lines = ["| benchmark | model | batch | measured | ratio | target | verdict | detail |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.benchmark} | {r.model} | {r.batch_size} | {r.measured} | {r.ratio:.3g} | {r.target} | "
                     f"{r.verdict} | {r.detail} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    models = argv or list(MODELS)
    RESULTS_FILE.unlink(missing_ok=True)
    start = time.perf_counter()
    results = []
    for name in models:
        header(describe(MODELS[name]()))
        for bench in BENCHMARKS:
            out = bench.run(name)
            results += out if isinstance(out, list) else [out]
    print(f"\nmachine: {machine()}; {time.perf_counter() - start:.0f} s in all\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
