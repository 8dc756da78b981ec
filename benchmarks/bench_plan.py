"""`mllm-arb plan run --calibrate` against `mllm-arb run` on the organism, side by side in one process:
the predicted wall time per stage and in total, and what the run then took (each stage's wall time from
its run directory's manifest). The issue's target: the total within 30%.

    python -m benchmarks.bench_plan [overrides]     # about 7 minutes on 2 cores with the default config
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from mllm_arb.pipeline.plan.plan import calibrate, plan_command
from mllm_arb.pipeline.run import run_pipeline
from mllm_arb.runtime.config import resolved

TARGET = 0.30


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as out:
        cfg = resolved([*overrides, f"output_dir={out}"])
        plan = plan_command(cfg, "run")
        predicted = calibrate(cfg, plan)
        start = time.perf_counter()
        result = run_pipeline(cfg, [*overrides, f"output_dir={out}"])
        total = time.perf_counter() - start
        measured = {}
        for child in result.children:
            manifest = json.loads((Path(child.path) / "manifest.json").read_text())
            measured[child.command] = sum(manifest.get("timings_s", {}).values())
    print(f"{'stage':12s} {'predicted s':>12s} {'measured s':>11s}")
    for stage, seconds in predicted["stages_s"].items():
        print(f"{stage:12s} {seconds:12.1f} {measured.get(stage, float('nan')):11.1f}")
    error = predicted["total_s"] / total - 1
    print(f"{'total':12s} {predicted['total_s']:12.1f} {total:11.1f}  ({error:+.0%}; target within {TARGET:.0%}; "
          f"calibration {predicted['calibration_s']:.1f} s)")
    return 0 if abs(error) <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
