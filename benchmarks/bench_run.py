"""`mllm-arb run` on the organism as it ran before the speed work and as it runs now, side by side in one
benchmark run, each arm a fresh process: wall time per stage and in total, the minor page faults each
arm took, and every number, truth value and string of every stage's results.json, heads.json and
findings.json compared (strings with the run folders' names taken out). The issue's target: now at
least 1.5x faster, every number within 1e-6 (relative to its size where it exceeds 1); the largest
absolute difference is printed too.

    python -m benchmarks.bench_run [--before REV] [--rounds N] [overrides]   # about 9 minutes a round on 2 cores

"Before" is this checkout with the switchable speed work off: the system allocator
(`MLLM_ARB_ALLOCATOR=system`, runtime/allocator.py) and no paired batches (`sweep.share_prefix=false`).
With `--before REV` it is the code of git revision REV instead, run from a temporary worktree.
`--rounds N` runs the two arms N times, alternating which goes first (before, now; now, before; ...), so
that a drift of the shared machine's speed falls on both; the ratio is the median round's.
"""

from __future__ import annotations

import json
import math
import os
import re
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


def cpu_seconds() -> float:
    """CPU seconds (user and system) that finished child processes took: unlike wall time, not inflated
    while a shared machine's other tenants hold the cores."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(env: dict, overrides: list[str], out: Path, code: Path | None = None) -> tuple[float, int, Path, float]:
    """(wall seconds, minor page faults, the run directory, CPU seconds) of one `mllm-arb run` in a fresh
    process (of the package in folder `code`, when given)."""
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    cpu = cpu_seconds()
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
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults, manifest.parent, cpu_seconds() - cpu


#: a run folder's name (`<date>_<time>-<hash>`): strings that name one differ between any two runs
RUN_NAME = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}-[0-9a-f]{8}")


def numbers(value, prefix: str = "", base: str = "") -> dict[str, float | bool | str]:
    """Every number, truth value and string in a JSON value, keyed by its path; in strings, the output
    folder `base` and run folders' names are replaced by placeholders."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in numbers(item, f"{prefix}/{key}", base).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numbers(item, f"{prefix}[{i}]", base).items()}
    if isinstance(value, bool):
        return {prefix: value}
    if isinstance(value, str):
        return {prefix: RUN_NAME.sub("<run>", value.replace(base, "<out>") if base else value)}
    return {prefix: float(value)} if isinstance(value, (int, float)) else {}


def stage_results(run_dir: Path, base: Path) -> dict[str, dict]:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    out = {}
    for command, folder in stages.items():
        for name in ("results.json", "heads.json", "findings.json"):
            path = run_dir / folder / name
            if path.exists():
                out[f"{command}/{name}"] = numbers(json.loads(path.read_text()), base=str(base))
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
            if isinstance(x, (bool, str)) or isinstance(y, (bool, str)):
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
    before, rounds = None, 1
    while overrides[:1] in (["--before"], ["--rounds"]):
        if overrides[0] == "--before":
            before = overrides[1]
        else:
            rounds = int(overrides[1])
        overrides = overrides[2:]
    if rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, not {rounds}")
    arms = dict(ARMS)
    measured: dict[str, list] = {"before": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        code = None
        if before is not None:
            code = Path(tmp) / "before-code"
            root = Path(__file__).resolve().parents[1]
            subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(code), before], check=True, capture_output=True)
            arms["before"] = ({}, [])
        try:
            for r in range(rounds):
                for name in (("before", "now") if r % 2 == 0 else ("now", "before")):
                    env, extra = arms[name]
                    print(f"round {r + 1}, {name}{f' ({before})' if name == 'before' and before else ''}: "
                          f"mllm-arb run {' '.join([*extra, *overrides])}", flush=True)
                    out = Path(tmp) / f"{name}-{r}"
                    seconds, faults, run_dir, cpu = run_once(env, [*extra, *overrides], out, code if name == "before" else None)
                    measured[name].append((seconds, faults, stage_seconds(run_dir), stage_results(run_dir, out), cpu))
                    sha = json.loads((run_dir / "manifest.json").read_text()).get("git_sha")
                    print(f"  {seconds:.0f} s ({cpu:.0f} CPU s), {faults:,} minor page faults, code at {sha}", flush=True)
        finally:
            if code is not None:
                subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "worktree", "remove", "--force", str(code)], capture_output=True)
                shutil.rmtree(code, ignore_errors=True)
    ratios = [b[0] / n[0] for b, n in zip(measured["before"], measured["now"])]
    median = sorted(range(rounds), key=lambda r: ratios[r])[(rounds - 1) // 2]  # the lower median for an even count
    (t0, f0, s0, r0, c0), (t1, f1, s1, _, c1) = measured["before"][median], measured["now"][median]
    print(f"\n{'stage':12s} {'before s':>9s} {'now s':>7s} {'ratio':>6s}   (round {median + 1}, the median ratio)")
    for stage in s0:
        print(f"{stage:12s} {s0[stage]:9.1f} {s1.get(stage, math.nan):7.1f} {s0[stage] / s1.get(stage, math.nan):6.2f}")
    print(f"{'total':12s} {t0:9.1f} {t1:7.1f} {t0 / t1:6.2f}   (target ≥ {TARGET}x)")
    if rounds > 1:
        print("every round: " + ", ".join(f"{b[0]:.0f} s -> {n[0]:.0f} s ({x:.2f}x)" for b, n, x in zip(measured["before"], measured["now"], ratios)))
    print(f"CPU seconds: {c0:.0f} before, {c1:.0f} now ({c0 / c1:.2f}x)")
    print(f"minor page faults: {f0:,} before, {f1:,} now")
    # every run of either arm against the median round's before run
    runs = [m[3] for m in measured["before"] + measured["now"]]
    gap, where = max((largest_difference(r0, r) for r in runs), key=lambda g: g[0])
    rel, rel_where = max((largest_difference(r0, r, relative=True) for r in runs), key=lambda g: g[0])
    print(f"over every value of every results.json, heads.json and findings.json ({sum(map(len, r0.values())):,} values, "
          f"{len(runs)} runs against the median round's before run):")
    print(f"  largest absolute difference {gap:.3g}{f' at {where}' if where else ''}")
    print(f"  largest difference relative to max(1, |number|) {rel:.3g}{f' at {rel_where}' if rel_where else ''} (target ≤ {TOLERANCE:g})")
    ok = ratios[median] >= TARGET and rel <= TOLERANCE
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
