"""What every benchmark shares: the two models, the samples, timing, peak memory, and the report line.

Models: the shipped organism (8 layers × 8 heads, d = 128) and a larger random-weight model of the same
family (LLaVA: CLIP tower + Llama text model) built in code from a config, sized so that one forward pass
over the benchmark batch takes ≥ 50 ms on CPU. Random weights are enough for timing and memory; only the
ranking-overlap number needs the trained organism to mean something.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from mllm_arb.core.prompt import render_all  # noqa: E402
from mllm_arb.core.records import Condition  # noqa: E402
from mllm_arb.data.synthetic import SyntheticConfig, generate_items  # noqa: E402
from mllm_arb.models.loading import load_adapter  # noqa: E402
from mllm_arb.pipeline.heads.methods import Prepared, prepare  # noqa: E402

#: results of every benchmark run in this process, for `make bench`'s summary and docs/performance.md
RESULTS_FILE = Path(os.environ.get("MLLM_ARB_BENCH_OUT", Path(tempfile.gettempdir()) / "mllm_arb_bench.jsonl"))
SETTINGS = (Condition.TEXT_FOLLOWING, Condition.VISION_FOLLOWING)

#: the larger random-weight model: twice the organism's width, 12 layers (96 heads), a wider vision tower;
#: about 10M parameters, a forward pass over its benchmark batch takes ≥ 50 ms on 2 CPU cores
LARGE_ARCH = dict(text_hidden=256, text_layers=12, text_heads=8, text_intermediate=688,
                  vision_hidden=128, vision_layers=4, vision_heads=4, vision_intermediate=512)  # fmt: skip


@cache
def organism():
    return load_adapter("organism")


@cache
def large():
    """A LLaVA model with the organism's processor and random weights at `LARGE_ARCH` sizes."""
    from mllm_arb.models.llava import LlavaAdapter
    from mllm_arb.organism.build import ArchConfig, build_model

    processor = organism().processor
    model = build_model(processor, ArchConfig(**LARGE_ARCH), seed=0).eval()
    return LlavaAdapter(model, processor, name="random-llava-" + "x".join(str(LARGE_ARCH[k]) for k in ("text_layers", "text_hidden")))


MODELS: dict[str, Callable] = {"organism": organism, "large": large}
#: rows per batch for each model (the larger one's naive loops would otherwise dominate `make bench`)
BATCH_SIZES = {"organism": 8, "large": 4}


def samples(n_items: int, settings=SETTINGS, seed: int = 1000):
    """Held-out synthetic conflict items (the organism's task) rendered in `settings`."""
    return render_all(generate_items(SyntheticConfig(n_items=n_items, seed=seed)), settings)


def prepared(adapter, n_items: int, batch_size: int) -> list[Prepared]:
    return prepare(adapter, samples(n_items), batch_size)


def describe(adapter) -> str:
    parts, cfg = adapter.parts, adapter.model.config.get_text_config()
    n_params = sum(p.numel() for p in adapter.model.parameters())
    return (f"{adapter.name}: {parts.n_layers} layers × {parts.n_heads} heads, d={cfg.hidden_size}, "
            f"ffn={cfg.intermediate_size}, vocab={parts.unembed.out_features}, {n_params / 1e6:.1f}M parameters")


# ------------------------------------------------------------------------------------ measuring
def synced(fn: Callable[[], object]) -> object:
    """`fn()`, returning once the GPU (where one is in use) has finished its queued work: kernels run
    asynchronously, so a clock read before that would time the launches, not the work."""
    out = fn()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return out


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of `repeat` calls (after one warm-up call), in seconds: on a machine shared with
    other work, noise only ever adds time, so the minimum is the closest to the cost itself."""
    synced(fn)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        synced(fn)
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, warmup: bool = True) -> dict[str, float]:
    """Best wall time of each function over `repeat` rounds (see `timed`), calls interleaved so that load
    from other processes hits every function alike (after a warm-up round, unless `warmup` is False)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for round_ in range(repeat + int(warmup)):
        for name, fn in fns.items():
            start = time.perf_counter()
            synced(fn)
            if round_ or not warmup:
                times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def paired_ratio(base: Callable[[], object], other: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    """(median over rounds of other's time / base's time in the same round, best base time, best other
    time): each round times both back to back, in alternating order, so load from other processes that
    comes and goes hits both sides of a ratio alike; the median ignores the rounds it hit unevenly."""
    synced(base), synced(other)  # warm-up
    ratios, best = [], {"base": float("inf"), "other": float("inf")}
    for round_ in range(rounds):
        times = {}
        for name in (("base", "other") if round_ % 2 == 0 else ("other", "base")):
            start = time.perf_counter()
            synced(base if name == "base" else other)
            times[name] = time.perf_counter() - start
            best[name] = min(best[name], times[name])
        ratios.append(times["other"] / times["base"])
    ratios.sort()
    middle = len(ratios) // 2
    median = ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
    return median, best["base"], best["other"]


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes held by tensors allocated while `fn` runs, above what was held when it started
    (the running total torch's CPU allocator reports to the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max([0, *totals])


def forward_ms(adapter, prep: Prepared, repeat: int = 5) -> float:
    with torch.no_grad():
        return 1000 * timed(lambda: adapter.model(**prep.batch.inputs, use_cache=False), repeat)


# ------------------------------------------------------------------------------------ reporting
@dataclass
class Result:
    benchmark: str
    model: str
    batch_size: int
    measured: str  # what the ratio compares
    ratio: float
    target: str
    passed: bool | None  # None: no target to pass
    detail: str = ""

    @property
    def verdict(self) -> str:
        return "—" if self.passed is None else "PASS" if self.passed else "MISS"

    def line(self) -> str:
        verdict = self.verdict
        return f"[{verdict}] {self.benchmark} on {self.model} (batch {self.batch_size}): {self.measured} = {self.ratio:.3g} (target {self.target}){'; ' + self.detail if self.detail else ''}"


def report(result: Result) -> Result:
    print(result.line(), flush=True)
    with RESULTS_FILE.open("a", encoding="utf-8") as f:
        f.write(json.dumps({**result.__dict__, "machine": machine()}) + "\n")
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def header(title: str) -> None:
    print(f"\n== {title}   [{machine()}]", flush=True)
