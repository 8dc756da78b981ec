"""mllm-arb: dissect how multimodal LLMs arbitrate between image and text context."""

import os

# Before torch loads: OpenMP threads that spin while waiting slow small CPU models down ~15x when the
# cores are shared with anything else (measured: 9.8 s vs 0.6 s per organism batch under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Freed activation memory is kept for reuse rather than returned to the kernel and faulted in again on
# every pass (runtime/allocator.py: 1.1-1.9x on the organism's sweeps; MLLM_ARB_ALLOCATOR=system: off).
from .runtime.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()

__version__ = "0.1.0"


def __getattr__(name: str):
    """The Python API (`mllm_arb.api`: load, conflict_items, conflict_batch, log_odds, knock_out,
    edit_heads, lens, ...), imported on first use so that `mllm-arb --help` does not load torch."""
    import importlib

    if name == "api":  # a submodule being imported, not an API name
        raise AttributeError(name)
    api = importlib.import_module("mllm_arb.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'mllm_arb' has no attribute {name!r}")
