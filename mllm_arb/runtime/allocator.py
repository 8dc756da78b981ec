"""glibc's allocator set to keep freed memory for reuse, for the many same-sized tensors of a CPU study.

A pass over a batch allocates and frees activation tensors of a few MiB each, hundreds of times a
second. By default glibc serves an allocation that large with a fresh `mmap` (above a threshold it
only raises after seeing frees) and hands freed heap tops back to the kernel, so the same memory is
faulted in again, page by page, on every pass. On the organism's blocking sweep that was 2 to 12
million minor page faults for three batches and 1.1-1.9x the time of the same sweep with about 90
thousand (docs/performance.md, "Where `mllm-arb run`'s time went"). Two `mallopt` settings stop it:
allocations below 32 MiB (the largest threshold glibc accepts) come from the heap, and the heap is
trimmed only above 2 GiB of free space. Results are bit-identical; the cost is that a process's
resident size stays near its peak instead of shrinking between passes.

Skipped, leaving the system's allocator as it is, when `MLLM_ARB_ALLOCATOR=system`, when the user set
glibc's own variables for them (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`, ..., `GLIBC_TUNABLES`), or where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: the largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2)
MMAP_THRESHOLD = 32 * 2**20
#: a C int
TRIM_THRESHOLD = 2**31 - 1
#: the environment variable that turns this off (`system`)
SWITCH = "MLLM_ARB_ALLOCATOR"

_state: str | None = None


#: glibc's own variables for what this sets
_GLIBC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _users_own_settings() -> bool:
    return any(k in os.environ for k in _GLIBC_VARIABLES) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> str:
    """Apply the settings once per process; returns what the allocator is now: `reuse` (set here),
    or `system (<why>)`."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get(SWITCH, "").strip().lower() == "system":
        _state = f"system ({SWITCH}=system)"
    elif _users_own_settings():
        _state = "system (the environment sets glibc's malloc)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state = "system (not glibc)"
    else:
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        except (OSError, AttributeError):
            ok = False
        _state = "reuse" if ok else "system (mallopt refused)"
    return _state


def allocator_state() -> str:
    """What `keep_freed_memory` did in this process (`system (not set)` before it ran)."""
    return _state or "system (not set)"
