"""The one stage skeleton every command runs on: open (or resume) a run directory, sweep work units
with progress (saved as they go, read back on `--resume`, split over the ranks under torchrun), merge
them on rank 0, write the tables and figures, and results.json last.

A stage function builds and checks its whole input first (bad input leaves no run directory behind),
then calls `Stage.open`, `Stage.map_units` once per kind of work, and `Stage.finish`. It returns a
`StageResult`; printing it is the user interface's job.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..core.errors import UserError
from .progress import Progress, bars
from .ranks import Ranks
from .resume import saved_units
from .runs import OPENED, RunDir, lock_run, unlock_run
from .units import FOLDER, UnitStore, drop_interrupted_writes, load_units, run_units, stage_store


@dataclass
class StageResult:
    """What a stage hands back: its run directory and, on the rank that writes, its results."""

    command: str
    path: Path
    results: dict | None = None  # None on the ranks of a sharded run that do not write
    title: str = ""
    #: named outputs worth pointing at (a dataset, heads.json, a report page)
    files: dict[str, Path] = field(default_factory=dict)
    #: child stages run inside this one (`run`, `validate`), in order
    children: list[StageResult] = field(default_factory=list)
    #: extra tables the stage computed for the user interface (for example the findings)
    extra: dict[str, Any] = field(default_factory=dict)


def start_run(cfg: DictConfig, command: str, resume: Path | None, ranks: Ranks, fingerprint: str, **manifest) -> RunDir:
    """Rank 0 creates the run directory (or reopens the one being resumed) and every rank gets its
    path; only rank 0's RunDir writes. A resumed run must see the same dataset it started on, and a
    stage that runs a model (its manifest names `model_source`) the same checkpoint files.
    `run.saved_at_start` counts each stage's batches saved before any rank of this session started."""
    from ..models.fingerprint import weights_fingerprint

    def make() -> tuple[str, dict[str, int]]:
        if "model_source" in manifest:
            manifest["model_fingerprint"] = weights_fingerprint(cfg.model.path)
        if resume is None:
            run = RunDir.create(cfg.output_dir, command, cfg.model.name, cfg)
            lock_run(run.path)
        else:
            lock_run(Path(resume))  # before anything is read: another process may be writing it
            run = RunDir.open(resume, cfg)
            saved_fp = run.extra.get("dataset_fingerprint")
            if saved_fp is not None and saved_fp != fingerprint:
                raise UserError(f"--resume {resume}: the dataset changed since the run started (fingerprint {saved_fp} "
                                f"then, {fingerprint} now); start a new run")
            saved_model, model_now = run.extra.get("model_fingerprint"), manifest.get("model_fingerprint")
            if saved_model and model_now and saved_model != model_now:
                raise UserError(f"--resume {resume}: the files of model {cfg.model.path} changed since the run started "
                                f"(fingerprint {saved_model} then, {model_now} now); start a new run")
            drop_interrupted_writes(run.path)
            history = list(run.extra.get("resumes", []))
            history.append({"at": datetime.now().isoformat(timespec="seconds"), "saved_batches": saved_units(run.path)})
            run.write_manifest(resumes=history)
        run.write_manifest(dataset_fingerprint=fingerprint, world_size=ranks.world, **manifest)
        OPENED.append((command, run.path))
        return str(run.path), saved_units(run.path)

    path, saved = ranks.share(make)
    run = RunDir.open(path, cfg, writer=ranks.main)
    run.saved_at_start = saved
    return run


def record_batches(run: RunDir, store: UnitStore) -> None:
    """Say in the manifest how many of a stage's batches this session reused and computed."""
    reused = run.saved_at_start.get(store.folder.name, 0)
    batches = dict(run.extra.get("batches", {}))
    batches[store.folder.name] = {"total": store.n_units, "reused": reused, "computed": store.n_units - reused}
    run.write_manifest(batches=batches)


def _samples(unit):
    return unit


@dataclass
class Stage:
    """One run of one command on this process: its config, ranks, run directory and progress."""

    cfg: DictConfig
    command: str
    ranks: Ranks
    run: RunDir
    bar: Progress

    @classmethod
    @contextmanager
    def open(cls, cfg: DictConfig, command: str, resume: Path | None, ranks: Ranks, fingerprint: str,
             **manifest) -> Iterator[Stage]:
        """The run directory (created, or reopened with `resume`) and progress bars on the main rank."""
        run = start_run(cfg, command, resume, ranks, fingerprint, **manifest)
        with bars(ranks.main) as bar:
            yield cls(cfg, command, ranks, run, bar)

    @property
    def main(self) -> bool:
        return self.ranks.main

    @property
    def rank_label(self) -> str:
        """A progress label's suffix naming this rank's part of a sharded run."""
        return f" (rank {self.ranks.rank} of {self.ranks.world})" if self.ranks.sharded else ""

    def task(self, label: str, total: int) -> Callable[[int], None]:
        """A progress bar of `total` steps; gives the function that advances it."""
        task = self.bar.add_task(f"{label}{self.rank_label}", total=total)
        return lambda n: self.bar.advance(task, n)

    def map_units(
        self,
        name: str,
        units: Sequence[Any],
        compute: Callable[[Any, Callable[[int], None]], Any],
        label: str,
        cost: Callable[[int, Any], int] = lambda i, unit: len(unit),
        samples_of: Callable[[Any], Sequence] = _samples,
        merged: bool = True,
        everyone: bool = False,
    ) -> list | None:
        """Every unit through `partial/<name>/`: `compute(unit, step)` gives a unit's rows (and advances the
        bar by the unit's `cost`); units saved before are read back. After a barrier rank 0 (every rank
        with `everyone`) gets every unit's rows in unit order, one list (`merged`) or one entry per unit;
        the other ranks get None."""
        store = stage_store(self.run.path, name, len(units))
        index = {id(u): i for i, u in enumerate(units)}
        step = self.task(label, sum(cost(i, u) for i, u in enumerate(units) if self.ranks.owns(i)))
        run_units(store, units, lambda u: compute(u, step), self.ranks,
                  on_reused=lambda u: step(cost(index[id(u)], u)), samples_of=samples_of)
        self.ranks.barrier()
        if not (self.main or everyone):
            return None
        saved = load_units(store, units, samples_of)
        if self.main:
            record_batches(self.run, store)
        return [row for rows in saved for row in rows] if merged else saved

    def finish(self, results: dict, title: str, tables: dict[str, list[dict]] | None = None,
               figures: Callable[[dict, Path, str], Any] | None = None, json_files: dict[str, Any] | None = None,
               files: dict[str, Path] | None = None, **extra: Any) -> StageResult:
        """Tables, JSON files and figures, then results.json: last, its presence marks the run complete."""
        for name, rows in (tables or {}).items():
            self.run.write_table(name, rows)
        for name, value in (json_files or {}).items():
            self.run.write_json(name, value)
        if figures is not None:
            with self.run.timed("plots"):
                figures(results, self.run.file("plots"), title)
        self.run.write_json("results.json", results)
        unlock_run(self.run.path)  # complete: nothing left to resume
        if not self.cfg.get("keep_partial", False):
            # the tables now hold every saved batch's rows, and a complete run is never resumed
            shutil.rmtree(self.run.path / FOLDER, ignore_errors=True)
        return StageResult(self.command, self.run.path, results, title, dict(files or {}), extra=extra)

    def result(self) -> StageResult:
        """What a rank that does not write returns."""
        return StageResult(self.command, self.run.path)
