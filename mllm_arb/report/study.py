"""What a report is drawn from: the stage runs of one model's study, found from the directories a user
names (a `run` parent, one stage run, several stage runs of one model, or a folder holding runs).

Nothing here imports torch or the models: a report can be written on any machine that has the run
directories. Each stage is recognised by the command named in its manifest; a run directory whose
manifest lacks one (or names a command we do not know) is recognised by its files instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.names import PARENTS, STAGES

#: `run` chains the study; `validate`, the other parent, scores it against a model's ground truth (its
#: validation.json becomes a section of the page)
PARENT = PARENTS[0]
#: how deep below a named folder run directories are looked for
MAX_DEPTH = 5


@dataclass
class StageRun:
    """One run directory, read once: its manifest, config, results and any other JSON, and its plots."""

    command: str
    path: Path
    manifest: dict
    config: dict
    results: dict
    extra: dict[str, Any] = field(default_factory=dict)  # other *.json at the top of the run (findings.json, ...)
    plots: dict[str, Path] = field(default_factory=dict)  # stem -> best file (svg over png)

    @property
    def model(self) -> str:
        return str(self.results.get("model") or (self.config.get("model") or {}).get("name") or self.path.parent.name)

    @property
    def checkpoint(self) -> str | None:
        """The fingerprint of the weights the run used (None for runs without a model, and old runs)."""
        fp = self.manifest.get("model_fingerprint")
        return str(fp) if fp else None

    @property
    def created(self) -> str:
        return str(self.manifest.get("created", ""))

    @property
    def findings(self) -> dict | None:
        f = self.extra.get("findings")
        return f if isinstance(f, dict) and f else None


@dataclass
class Study:
    """The stage runs of one model (the latest run of each stage), and where its report goes."""

    model: str
    stages: dict[str, StageRun]
    parent: StageRun | None = None
    superseded: list[StageRun] = field(default_factory=list)  # older runs of a stage given too
    #: stage runs that never wrote results.json (interrupted, or still running): shown as unfinished, not read
    unfinished: list[StageRun] = field(default_factory=list)

    def ordered(self) -> list[StageRun]:
        """The stage runs in pipeline order (runs of an unknown command last)."""
        return [self.stages[s] for s in STAGES if s in self.stages] + [r for c, r in self.stages.items() if c not in STAGES]

    def get(self, command: str) -> StageRun | None:
        return self.stages.get(command)

    @property
    def missing(self) -> list[str]:
        return [s for s in STAGES if s not in self.stages and s != "build-data"]

    @property
    def home(self) -> Path:
        """Where `report.html` goes: the parent run if any, else the one stage run, else the latest stage."""
        if self.parent is not None:
            return self.parent.path
        runs = list(self.stages.values())
        order = {s: i for i, s in enumerate(STAGES)}
        return max(runs, key=lambda r: (order.get(r.command, -1), r.created)).path if len(runs) > 1 else runs[0].path

    @property
    def n_layers(self) -> int | None:
        for run in self.stages.values():
            n = run.results.get("n_layers")
            if isinstance(n, int) and n > 0:
                return n
        return None


# ----------------------------------------------------------------------------------------- reading
def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def read_run(path: Path) -> StageRun:
    path = Path(path)
    manifest = read_json(path / "manifest.json") if (path / "manifest.json").exists() else {}
    results = read_json(path / "results.json") if (path / "results.json").exists() else {}
    config: dict = {}
    if (path / "config.yaml").exists():
        from omegaconf import OmegaConf

        try:
            config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml")) or {}
        except Exception as exc:  # noqa: BLE001 - any unreadable config is the same one-line error
            raise UserError(f"cannot read {path / 'config.yaml'}: {exc}") from None
    extra = {p.stem: read_json(p) for p in sorted(path.glob("*.json")) if p.name not in ("manifest.json", "results.json")}
    plots: dict[str, Path] = {}
    for p in sorted((path / "plots").glob("*.png")) + sorted((path / "plots").glob("*.svg")):  # svg wins
        if not p.name.startswith("."):
            plots[p.stem] = p
    run = StageRun(command="", path=path, manifest=manifest, config=config, results=results, extra=extra, plots=plots)
    run.command = stage_of(run)
    return run


def stage_of(run: StageRun) -> str:
    """The command that wrote a run directory: its manifest says so; else its files and keys tell."""
    named = str(run.manifest.get("command", ""))
    if named in STAGES or named in PARENTS:
        return named
    folder = run.path.name if run.path.name in STAGES else run.path.parent.parent.name
    if folder in STAGES or folder in PARENTS:
        return folder
    r, files = run.results, {p.name for p in run.path.iterdir()}
    if "knockout" in r or "knockout.parquet" in files:
        return "analyze"
    if "mfr" in r or "samples.parquet" in files:
        return "evaluate"
    if "dataset" in files:
        return "build-data"
    if any("amplif" in k or "alpha" in k for k in r):
        return "amplify"
    if any("block" in k or "ablat" in k for k in r):
        return "ablate"
    if any("rank" in k or "heads" in k for k in r):
        return "rank-heads"
    return named or "unknown"


def is_run(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def runs_below(path: Path, depth: int = MAX_DEPTH) -> list[Path]:
    """Run directories at or below `path` (a run directory's own subfolders are searched too: a `run`
    parent may keep its stages there)."""
    found: list[Path] = []
    if is_run(path):
        found.append(path)
    if depth == 0:
        return found
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "plots")
    except OSError:
        return found
    for child in children:
        found += runs_below(child, depth - 1)
    return found


def linked_runs(run: StageRun) -> list[Path]:
    """Run directories a parent names in its results or manifest (any string that is a run directory,
    absolute, relative to the working directory or to the parent)."""
    out: list[Path] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list):
            for v in obj:
                visit(v)
        elif isinstance(obj, str) and 0 < len(obj) < 1000 and ("/" in obj or "\\" in obj):
            for cand in (Path(obj), run.path / obj):
                try:
                    if cand.is_dir() and is_run(cand) and cand.resolve() != run.path.resolve():
                        out.append(cand)
                        break
                except OSError:
                    pass

    visit(run.results)
    visit(run.manifest)
    return out


def grid_jobs(grid: StageRun) -> list[Path]:
    """The run directories of a grid's finished jobs (absolute, or relative to the grid's output_dir)."""
    out = []
    base = Path(str((grid.config or {}).get("output_dir") or "."))
    for job in grid.results.get("jobs") or []:
        if job.get("status") != "ok" or not job.get("run_dir"):
            continue
        where = Path(job["run_dir"])
        for cand in (where, base / where, grid.path / where):
            if cand.is_dir() and is_run(cand):
                out.append(cand)
                break
    return out


def collect_runs(paths: list[Path]) -> tuple[list[StageRun], list[StageRun]]:
    """(stage runs, parent runs) named by `paths`, each read once."""
    seen: set[Path] = set()
    stages: list[StageRun] = []
    parents: list[StageRun] = []

    def add(p: Path) -> None:
        key = p.resolve()
        if key in seen:
            return
        seen.add(key)
        run = read_run(p)
        if run.manifest.get("command") == "grid":  # a grid is its jobs' runs: one model each, side by side
            jobs = grid_jobs(run)
            if not jobs:
                raise UserError(f"{p} is a grid whose jobs all failed or never finished: nothing to report on")
            for q in jobs:
                add(q)
            return
        if run.command in PARENTS:
            parents.append(run)
            for q in linked_runs(run):
                add(q)
            for q in runs_below(p)[1:]:
                add(q)
        else:
            stages.append(run)

    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path} is not a directory (give run directories written by mllm-arb)")
        found = runs_below(path)
        if not found:
            raise UserError(f"{path} holds no run directory (no manifest.json at or below it)")
        for p in found if not is_run(path) else [path]:
            add(p)
    return stages, parents


def group_by_model(stages: list[StageRun], parents: list[StageRun]) -> list[Study]:
    """One study per model, each with the latest run of every stage; in the order the models first appear."""
    by_model: dict[str, list[StageRun]] = {}
    for run in stages:
        by_model.setdefault(run.model, []).append(run)
    groups = _split_by_checkpoint(by_model)
    studies = []
    for model, base, runs in groups:
        latest: dict[str, StageRun] = {}
        older: list[StageRun] = []
        unfinished = [r for r in runs if r.command in STAGES and not (r.path / "results.json").exists()]
        for run in sorted(runs, key=lambda r: r.created):
            if run in unfinished:
                continue
            if run.command in latest:
                older.append(latest[run.command])
            latest[run.command] = run
        parent = next((p for p in parents if _parent_model(p) == base), None)
        if parent is None and len(parents) == 1 and len(groups) == 1:
            parent = parents[0]
        studies.append(Study(model=model, stages=latest, parent=parent, superseded=older, unfinished=unfinished))
    for p in parents:  # a parent whose stages are all missing still gets a (mostly empty) study
        if not any(s.parent is p for s in studies) and _parent_model(p) not in by_model:
            studies.append(Study(model=_parent_model(p), stages={}, parent=p))
    return studies


def _parent_model(run: StageRun) -> str:
    return run.model


def _split_by_checkpoint(by_model: dict[str, list[StageRun]]) -> list[tuple[str, str, list[StageRun]]]:
    """(label, model name, runs) per model. A model name whose runs used different weights (the same
    `model.name` with another `model.path`) is several models: each is labelled with its checkpoint's
    fingerprint. Runs without a model (build-data) stay with the first."""
    out = []
    for name, runs in by_model.items():
        prints = list(dict.fromkeys(r.checkpoint for r in runs if r.checkpoint))
        if len(prints) < 2:
            out.append((name, name, runs))
            continue
        for k, fp in enumerate(prints):
            out.append((f"{name} [{fp[:8]}]", name, [r for r in runs if r.checkpoint == fp or (k == 0 and not r.checkpoint)]))
    return out


def load_study(paths: list[Path]) -> Study:
    """The study of one model, from a `run` parent, one stage run, or several stage runs of that model."""
    stages, parents = collect_runs(paths)
    studies = group_by_model(stages, parents)
    if len(studies) > 1:
        names = ", ".join(s.model for s in studies)
        raise UserError(f"these runs are of several models ({names}); use `mllm-arb report --compare` to put them side by side")
    study = studies[0]
    if not study.stages and study.unfinished:
        r = study.unfinished[-1]
        raise UserError(f"{r.path} is an unfinished {r.command} run (no results.json); continue it with "
                        f"mllm-arb {r.command} --resume {r.path}, then report")
    if not study.stages:
        raise UserError(f"{study.home} holds no stage run (evaluate, analyze, rank-heads, ablate, amplify) to report on")
    return study


def load_studies(paths: list[Path]) -> list[Study]:
    """One study per model among the runs named (each path a `run` parent, a stage run, or a folder)."""
    stages, parents = collect_runs(paths)
    studies = [s for s in group_by_model(stages, parents) if s.stages]
    if not studies:
        raise UserError("no stage run (evaluate, analyze, rank-heads, ablate, amplify) among the directories given")
    return studies


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
