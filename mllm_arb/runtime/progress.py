"""Progress of a stage: what a stage reports to (`Progress`), and the bars on stderr that show it."""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol

from rich.console import Console


class Progress(Protocol):
    """What a stage calls while it works (rich's `Progress` is one)."""

    def add_task(self, description: str, total: float | None = ...) -> Any: ...

    def advance(self, task_id: Any, advance: float = 1) -> None: ...


def console_width() -> int | None:
    """Piped into a log (CI, `| tee`), rich would fold tables to 80 columns ("befo…"): give them room."""
    return None if os.environ.get("COLUMNS") or sys.stdout.isatty() else 140


def bars(enabled: bool = True):
    """Progress bars with counts, elapsed time and an estimate of the time left, on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

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
