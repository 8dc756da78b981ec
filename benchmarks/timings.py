"""The wall times the docs quote, measured in one go and written to docs/timings.md (`make timings`):
`make analyze`'s command, `mllm-arb run` on the organism with its stage and sub-stage times, the
quickstart notebook, and the test suite. Run it on a machine doing nothing else; it takes about 15
minutes on 2 cores. Speed ratios of the fast paths are `make bench`'s (docs/performance.md)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def timed(cmd: list[str], cwd: Path = ROOT) -> float:
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout[-3000:]}")
    return time.monotonic() - t0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mllm_arb.cli", *args]


def main() -> None:
    rows: list[tuple[str, str, str]] = []
    # kept (outputs/ is not versioned): the run's report is docs/organism-report.html's source
    out = ROOT / "outputs" / "timings" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True)
    analyze = timed(cli("analyze", f"output_dir={out}"))
    manifest = json.loads(next((out / "analyze").glob("*/*/manifest.json")).read_text())
    rows.append(("`make analyze` (`mllm-arb analyze`, default configuration)", f"{analyze:.0f} s",
                 "; ".join(f"{k} {v:.0f} s" for k, v in manifest["timings_s"].items())))
    wall = timed(cli("run", f"output_dir={out}"))
    parent = next((out / "run").glob("*/*/manifest.json"))
    stages = json.loads(parent.read_text())["timings_s"]
    rows.append(("`mllm-arb run` (the whole study, default configuration, 200 items)", f"{wall:.0f} s", "per stage below"))
    for stage, seconds in stages.items():
        child = next(iter((parent.parent / stage).glob("*/*/manifest.json")), None)
        parts = json.loads(child.read_text()).get("timings_s", {}) if child else {}
        rows.append((f"· {stage}", f"{seconds:.0f} s", "; ".join(f"{k} {v:.1f} s" for k, v in parts.items())))
    run_dir = parent.parent
    report = timed(cli("report", str(run_dir), "--out", str(out / "r.html")))
    rows.append(("`mllm-arb report` of that run", f"{report:.1f} s", ""))
    rows.append(("docs/quickstart.ipynb (every cell)", f"{timed([sys.executable, '-m', 'tests.notebook', 'docs/quickstart.ipynb']):.0f} s", ""))
    rows.append(("`make test` (`pytest -q`)", f"{timed([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider']) / 60:.1f} min", ""))
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or "?"
    lines = [
        "# Timings",
        "",
        f"Measured {date.today().isoformat()} at commit {sha} by `make timings` (`benchmarks/timings.py`), one command",
        f"after the other on an otherwise idle machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python "
        f"{platform.python_version()}, no GPU. Other docs quote these numbers; rerun it after a change that moves them.",
        "",
        "| what | wall time | where it goes |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "The speed ratios of the fast paths against the straightforward ones are `make bench`'s",
        "([performance.md](performance.md)).",
        "",
    ]
    (ROOT / "docs" / "timings.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"the run: {run_dir}")


if __name__ == "__main__":
    main()
