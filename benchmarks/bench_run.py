"""`mllm-arb run` on the organism as it ran before the speed work and as it runs now, side by side in one
benchmark run, each arm a fresh process: wall time per stage and in total, the minor page faults each
arm took, and every number of every stage's results.json (and the heads ranking) compared. The issue's
target: now at least 1.5x faster, every number within 1e-6 (relative to its size where it exceeds 1:
paired batches round differently in float32's last digits, and amplification's log-odds changes run to
tens); the largest absolute difference is printed too.

    python -m benchmarks.bench_run [--before REV] [overrides]   # about 10 minutes on 2 cores, default config

"Before" is this checkout with the switchable speed work off: the system allocator
(`MLLM_ARB_ALLOCATOR=system`, runtime/allocator.py) and no paired batches (`sweep.share_prefix=false`).
With `--before REV` it is the code of git revision REV instead, run from a temporary worktree.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.5
TOLERANCE = 1e-6

ARMS = {
    "before": ({"MLLM_ARB_ALLOCATOR": "system"}, ["sweep.share_prefix=false"]),
    "now": ({}, []),
}


def run_once(env: dict, overrides: list[str], out: Path, code: Path | None = None) -> tuple[float, int, Path]:
    """(wall seconds, minor page faults, the run directory) of one `mllm-arb run` in a fresh process (of
    the package in folder `code`, when given)."""
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    start = time.perf_counter()
    if code is not None:
        env = {**env, "PYTHONPATH": str(code)}
    proc = subprocess.run([sys.executable, "-m", "mllm_arb.cli", "run", f"output_dir={out}", *overrides],
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True,
                          cwd=code)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"mllm-arb run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    [manifest] = Path(out).glob("run/*/*/manifest.json")
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults, manifest.parent


def numbers(value, prefix: str = "") -> dict[str, float | bool]:
    """Every number and truth value in a JSON value, keyed by its path (strings name files and runs)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in numbers(item, f"{prefix}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numbers(item, f"{prefix}[{i}]").items()}
    if isinstance(value, bool):
        return {prefix: value}
    return {prefix: float(value)} if isinstance(value, (int, float)) else {}


def stage_results(run_dir: Path) -> dict[str, dict]:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    out = {}
    for command, folder in stages.items():
        for name in ("results.json", "heads.json", "findings.json"):
            path = run_dir / folder / name
            if path.exists():
                out[f"{command}/{name}"] = numbers(json.loads(path.read_text()))
    return out


def largest_difference(a: dict[str, dict], b: dict[str, dict], relative: bool = False) -> tuple[float, str]:
    """The largest |x - y| over every shared key (`relative`: divided by max(1, |x|)), and where; a truth
    value that differs, or a missing key, is infinite."""
    if a.keys() != b.keys():
        return math.inf, f"files differ: {sorted(a.keys() ^ b.keys())}"
    worst, where = 0.0, ""
    for file in a:
        if a[file].keys() != b[file].keys():
            return math.inf, f"{file}: keys differ: {sorted(a[file].keys() ^ b[file].keys())[:5]}"
        for key, x in a[file].items():
            y = b[file][key]
            if isinstance(x, bool) or isinstance(y, bool):
                gap = 0.0 if x == y else math.inf
            elif x == y or (math.isnan(x) and math.isnan(y)):
                gap = 0.0
            else:
                gap = abs(x - y) / (max(1.0, abs(x)) if relative else 1.0)
            if gap > worst:
                worst, where = gap, f"{file}{key} ({x!r} vs {y!r})"
    return worst, where


def stage_seconds(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "manifest.json").read_text())["timings_s"]


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    before = None
    if overrides[:1] == ["--before"]:
        before, overrides = overrides[1], overrides[2:]
    arms = dict(ARMS)
    measured = {}
    with tempfile.TemporaryDirectory() as tmp:
        code = None
        if before is not None:
            code = Path(tmp) / "before-code"
            root = Path(__file__).resolve().parents[1]
            subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(code), before], check=True, capture_output=True)
            arms["before"] = ({}, [])
        try:
            for name, (env, extra) in arms.items():
                print(f"{name}{f' ({before})' if name == 'before' and before else ''}: mllm-arb run {' '.join([*extra, *overrides])}", flush=True)
                seconds, faults, run_dir = run_once(env, [*extra, *overrides], Path(tmp) / name, code if name == "before" else None)
                measured[name] = (seconds, faults, stage_seconds(run_dir), stage_results(run_dir))
                sha = json.loads((run_dir / "manifest.json").read_text()).get("git_sha")
                print(f"  {seconds:.0f} s, {faults:,} minor page faults, code at {sha}", flush=True)
        finally:
            if code is not None:
                subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "worktree", "remove", "--force", str(code)], capture_output=True)
                shutil.rmtree(code, ignore_errors=True)
    (t0, f0, s0, r0), (t1, f1, s1, r1) = measured["before"], measured["now"]
    print(f"\n{'stage':12s} {'before s':>9s} {'now s':>7s} {'ratio':>6s}")
    for stage in s0:
        print(f"{stage:12s} {s0[stage]:9.1f} {s1.get(stage, math.nan):7.1f} {s0[stage] / s1.get(stage, math.nan):6.2f}")
    ratio = t0 / t1
    gap, where = largest_difference(r0, r1)
    rel, rel_where = largest_difference(r0, r1, relative=True)
    print(f"{'total':12s} {t0:9.1f} {t1:7.1f} {ratio:6.2f}   (target ≥ {TARGET}x)")
    print(f"minor page faults: {f0:,} before, {f1:,} now")
    print(f"over every number of every results.json, heads.json and findings.json ({sum(map(len, r0.values())):,} values):")
    print(f"  largest absolute difference {gap:.3g}{f' at {where}' if where else ''}")
    print(f"  largest difference relative to max(1, |number|) {rel:.3g}{f' at {rel_where}' if rel_where else ''} (target ≤ {TOLERANCE:g})")
    ok = ratio >= TARGET and rel <= TOLERANCE
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
