"""Per-batch results saved as a stage goes, in `partial/<stage>/` of the run directory.

A long stage is cut into numbered work units (one batch of samples each, in the order a single process
would run them). Each unit's rows are written atomically to `partial/<stage>/<unit>.json` as soon as it
is done, together with the (item, condition) keys of its samples. This one mechanism gives

- resume: a unit whose file exists is read back, never recomputed (a crash loses at most the units in
  flight);
- sharding: under torchrun rank r computes the units it owns (round robin) and rank 0 merges every
  unit, in unit order, into the table a single process would have written.

JSON keeps every value exactly (Python writes floats with their shortest round-tripping repr).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.files import atomic_write_bytes
from ..core.records import Sample
from .ranks import Ranks

FOLDER = "partial"


def unit_keys(samples: Sequence[Sample]) -> list[list[str]]:
    return [[s.item_id, s.condition.value] for s in samples]


@dataclass
class UnitStore:
    """The saved units of one stage of one run."""

    folder: Path
    n_units: int

    def path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.json"

    def saved(self) -> list[int]:
        """Indices of the units already on disk (temporary files of an interrupted write don't count)."""
        if not self.folder.is_dir():
            return []
        out = []
        for p in self.folder.glob("*.json"):
            if p.stem.isdigit() and int(p.stem) < self.n_units:
                out.append(int(p.stem))
        return sorted(out)

    def save(self, index: int, keys: list[list[str]], rows: Any, rank: int = 0) -> None:
        payload = {"unit": index, "rank": rank, "keys": keys, "rows": rows}
        atomic_write_bytes(self.path(index), json.dumps(payload).encode())

    def load(self, index: int, keys: list[list[str]] | None = None) -> Any:
        path = self.path(index)
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable saved batch ({type(exc).__name__}); delete it to recompute it") from None
        if keys is not None and payload.get("keys") != keys:
            raise UserError(f"{path}: saved for other samples than this run's batch {index} (was the dataset changed?)")
        return payload["rows"]


@dataclass
class UnitStats:
    computed: int = 0
    reused: int = 0
    owned: list[int] = field(default_factory=list)


def run_units(
    store: UnitStore,
    units: Sequence[Any],
    compute: Callable[[Any], Any],
    ranks: Ranks,
    on_reused: Callable[[Any], None] | None = None,
    samples_of: Callable[[Any], Sequence[Sample]] = lambda unit: unit,
) -> UnitStats:
    """Compute (and save) every unit this rank owns that is not saved yet; `compute` reports its own
    progress, `on_reused` is told of each unit read back instead. A unit is a batch of samples (or
    something holding one: `samples_of` finds them)."""
    stats = UnitStats()
    done = set(store.saved())
    for index, unit in enumerate(units):
        if not ranks.owns(index):
            continue
        stats.owned.append(index)
        if index in done:
            store.load(index, unit_keys(samples_of(unit)))  # fail early on a unit saved for other samples
            stats.reused += 1
            if on_reused:
                on_reused(unit)
        else:
            store.save(index, unit_keys(samples_of(unit)), compute(unit), ranks.rank)
            stats.computed += 1
    return stats


def load_units(store: UnitStore, units: Sequence[Any], samples_of: Callable[[Any], Sequence[Sample]] = lambda unit: unit) -> list:
    """What every unit saved, in unit order."""
    missing = [i for i in range(len(units)) if not store.path(i).is_file()]
    if missing:
        raise RuntimeError(f"{store.folder}: {len(missing)} of {len(units)} batches missing after every rank finished")
    return [store.load(index, unit_keys(samples_of(unit))) for index, unit in enumerate(units)]


def drop_interrupted_writes(run_path: Path) -> int:
    """Delete the temporary files of writes a crash cut short (their units are simply recomputed)."""
    tmps = list((Path(run_path) / FOLDER).glob("*/.*.tmp"))
    for tmp in tmps:
        tmp.unlink(missing_ok=True)
    return len(tmps)


def stage_store(run_path: Path, stage: str, n_units: int) -> UnitStore:
    return UnitStore(Path(run_path) / FOLDER / stage, n_units)
