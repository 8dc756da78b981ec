"""Progress of a stage: what a stage reports to (`Progress`), and the bars on stderr that show it."""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import datetime
from typing import Any, Protocol

from rich.console import Console

from ..core.errors import UserError


class Progress(Protocol):
    """What a stage calls while it works (rich's `Progress` is one)."""

    def add_task(self, description: str, total: float | None = ...) -> Any: ...

    def advance(self, task_id: Any, advance: float = 1) -> None: ...


def console_width() -> int | None:
    """Piped into a log (CI, `| tee`), rich would fold tables to 80 columns ("befo…"): give them room."""
    return None if os.environ.get("COLUMNS") or sys.stdout.isatty() else 140


def log_line(text: str, stream=None) -> None:
    """One dated line on stderr (or `stream`), flushed at once: what a log keeps of a run's progress."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", file=stream or sys.stderr, flush=True)


def log_every() -> float:
    """Seconds between progress lines in a log: `MLLM_ARB_LOG_EVERY` (default 30)."""
    text = os.environ.get("MLLM_ARB_LOG_EVERY", "30")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise UserError(f"MLLM_ARB_LOG_EVERY={text!r}: give the seconds between progress lines, a number > 0")
    return seconds


class LogProgress:
    """Progress for logs (SLURM, nohup, CI: stderr is not a terminal, where a bar shows nothing until it
    ends): a line when a task starts, one every `every` seconds with done/total, elapsed and an estimate
    of the time left, and one when it finishes."""

    def __init__(self, stream=None, every: float | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.every = log_every() if every is None else every
        self.enabled = enabled
        self.tasks: dict[int, dict] = {}
        self.console = Console(file=self.stream, width=console_width())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def _say(self, text: str) -> None:
        if self.enabled:
            log_line(text, self.stream)

    def add_task(self, description: str, total: float | None = None) -> int:
        task = len(self.tasks)
        now = time.monotonic()
        self.tasks[task] = {"description": description, "total": total, "done": 0.0, "start": now, "said": now}
        self._say(f"start: {description}" + (f" ({int(total)} steps)" if total else ""))
        if total == 0:
            self._say(f"done: {description} in 0 s")
        return task

    def advance(self, task_id: int, advance: float = 1) -> None:
        t = self.tasks[task_id]
        t["done"] += advance
        now, total = time.monotonic(), t["total"]
        elapsed = now - t["start"]
        if total and t["done"] >= total:
            if not t.get("finished"):
                t["finished"] = True
                self._say(f"done: {t['description']} in {elapsed:.0f} s")
        elif now - t["said"] >= self.every:
            t["said"] = now
            left = elapsed * (total - t["done"]) / t["done"] if total and t["done"] else None
            share = f" ({100 * t['done'] / total:.0f}%)" if total else ""
            eta = f", about {left:.0f} s left" if left is not None else ""
            self._say(f"{t['description']}: {int(t['done'])}/{int(total) if total else '?'}{share}, {elapsed:.0f} s{eta}")


def bars(enabled: bool = True):
    """Progress bars with counts, elapsed time and an estimate of the time left, on stderr; where stderr
    is not a terminal, dated lines instead (`LogProgress`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    if not sys.stderr.isatty():
        return LogProgress(enabled=enabled)
    return RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True, width=console_width()),
        transient=False,
        disable=not enabled,
    )
