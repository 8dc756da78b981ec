"""`mllm-arb grid COMMAND OVERRIDES...`: one command over a grid of configs, as a Hydra multirun.

Comma-separated values sweep (`model=llava_tiny,qwen2_vl_tiny analysis.window=1,3`: 4 jobs), through
Hydra's own sweeper and launcher: `hydra/launcher=local` (joblib processes on this machine, the default)
or `hydra/launcher=slurm` (submitit, one SLURM job per grid job). Each job is an ordinary run of the
command and writes its ordinary run directory; the grid itself is a run directory too,
`outputs/grid/<command>/<stamp>-<hash>/`, with Hydra's per-job records in `jobs/<n>/` and a summary of
every job (overrides, status, run directory, headline numbers) in `results.json`.

The CLI composes configs with Hydra's compose API, not `@hydra.main`; the grid reaches the same
machinery through the Hydra instance that `initialize_config_dir` sets up.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..core.errors import UserError
from ..core.names import GRID_COMMANDS, SHARDABLE
from ..core.paths import conf_dir
from ..core.results import GridResults
from ..core.verdicts import verdict_of
from ..runtime.runs import RunDir
from ..runtime.stage import StageResult
from .registry import stage_function
from .run import OnStage, run_pipeline

DEFAULT_LAUNCHER = "local"


# ------------------------------------------------------------------------------------ one job
def _stage(command: str, on_stage: OnStage | None):
    if command == "run":
        return lambda cfg: run_pipeline(cfg, _job_overrides(), on_stage)
    return stage_function(command)


def _job_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def _slurm_ranks(command: str) -> None:
    """A SLURM job with several tasks (hydra.launcher.tasks_per_node > 1) runs one command sharded: the
    ranks torchrun would set come from SLURM's variables (via submitit's helper)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "RANK" in os.environ:
        return
    if command not in SHARDABLE:
        raise UserError(f"`{command}` does not run sharded: use hydra.launcher.tasks_per_node=1")
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@contextmanager
def _compose_allowed() -> Iterator[None]:
    """Inside a Hydra job the global Hydra instance is set; stages that compose configs themselves (`run`
    composes its children's) need it free. Hydra's state is put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    state = Singleton.get_state()
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        Singleton.set_state(state)


def job(command: str, on_stage: OnStage | None, cfg: DictConfig) -> dict[str, Any]:
    """Run one grid job; its failure is reported in the summary, not raised (the other jobs go on).
    `on_stage` is shown each finished stage (in the job's own process)."""
    overrides = _job_overrides()
    try:
        _slurm_ranks(command)
        OmegaConf.resolve(cfg)
        with _compose_allowed():
            result = _stage(command, on_stage)(cfg)
        if on_stage is not None and command != "run":
            on_stage(result)
        return {"overrides": overrides, "status": "ok", "run_dir": str(result.path)}
    except UserError as exc:
        return {"overrides": overrides, "status": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a crash of one job must not lose the others' summary
        return {"overrides": overrides, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


# ------------------------------------------------------------------------------------ the grid
def split_overrides(overrides: list[str]) -> tuple[list, list[str]]:
    """(sweeps, fixed): the parsed overrides with several values, and the other overrides as given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    for o in sweeps:
        if o.get_key_element() in ("output_dir", "hydra.sweep.dir"):
            raise UserError(f"{o.input_line}: {o.get_key_element()} cannot be swept; every job writes below one output_dir")
    return sweeps, [o.input_line for o in parsed if not o.is_sweep_override()]


def check_values(sweeps: list, fixed: list[str], compose) -> DictConfig:
    """Compose the fixed overrides with each swept value in turn, so that a bad value fails before any
    job (or the grid's run directory) exists; gives the config of the fixed overrides."""
    fixed = [o for o in fixed if not o.lstrip("+~").startswith("hydra")]
    for o in sweeps:
        for value in o.sweep_string_iterator():
            compose([*fixed, f"{o.get_key_element()}={value}"])
    return compose(fixed)


def check_launcher(hydra_overrides: list[str]) -> None:
    """Compose Hydra's own config with the launcher choice, so a launcher whose plugin is missing (or a bad
    launcher option) fails before the grid's run directory exists."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose("config", overrides=hydra_overrides, return_hydra_config=True)
    except HydraException as exc:
        if any("launcher=slurm" in o for o in hydra_overrides) and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
            raise UserError("hydra/launcher=slurm needs Hydra's submitit launcher: pip install 'mllm-arb[slurm]'") from None
        raise exc
    if not cfg.hydra.launcher.get("_target_"):
        raise UserError("no launcher configured (hydra/launcher=local or slurm)")


def _launcher_given(overrides: list[str]) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] in ("hydra/launcher", "hydra.launcher") for o in overrides)


def run_grid(command: str, overrides: list[str], compose, on_stage: OnStage | None = None) -> StageResult:
    """Every job of the grid; `compose` composes a config from overrides (to check values before any
    job), `on_stage` is shown each job's finished stages."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if command not in GRID_COMMANDS:
        raise UserError(f"grid runs one of {', '.join(GRID_COMMANDS)}, not {command!r}")
    parsed, fixed = split_overrides(overrides)
    if not parsed:
        raise UserError(f"no swept override (give comma-separated values, e.g. model=llava_tiny,qwen2_vl_tiny); "
                        f"for a single run use `mllm-arb {command}`")
    base = check_values(parsed, fixed, compose)
    sweeps = [o.input_line for o in parsed]
    launcher = [] if _launcher_given(overrides) else [f"hydra/launcher={DEFAULT_LAUNCHER}"]
    check_launcher([*[o for o in fixed if o.lstrip("+~").startswith("hydra")], *launcher])
    grid_cfg = OmegaConf.create({"grid": {"command": command, "overrides": list(overrides), "sweeps": sweeps},
                                 "output_dir": base.output_dir, "seed": base.seed})
    run = RunDir.create(base.output_dir, "grid", command, grid_cfg)
    hydra_args = [f"hydra.sweep.dir='{run.file('jobs')}'", "hydra.sweep.subdir=${hydra.job.num}", "hydra.job.chdir=false"]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None, job_name=f"mllm-arb-{command}"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        with run.timed("jobs"):
            returns = hydra.multirun(config_name="config", task_function=partial(job, command, on_stage),
                                     overrides=[*overrides, *launcher, *hydra_args], with_log_configuration=False)
    jobs = [summarise_job(r) for batch in returns for r in batch]
    results: GridResults = {"command": command, "sweeps": sweeps, "n_jobs": len(jobs), "n_ok": sum(j["status"] == "ok" for j in jobs),
               "n_failed": sum(j["status"] != "ok" for j in jobs), "jobs": jobs}
    run.write_json("results.json", results)
    return StageResult("grid", run.path, results, command)


def summarise_job(ret) -> dict[str, Any]:
    num = ret.hydra_cfg.hydra.job.num if ret.hydra_cfg is not None else None
    try:
        out = dict(ret.return_value)
    except Exception as exc:  # noqa: BLE001 - Hydra re-raises a job's uncaught failure here
        out = {"overrides": list(ret.overrides or []), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    out["job"] = num
    if out.get("run_dir"):
        out["headline"] = headline(Path(out["run_dir"]))
    return out


def headline(run_dir: Path) -> dict[str, Any]:
    """A job's few key numbers, read back from its run directory."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    if "mfr" in results and isinstance(results["mfr"], dict):
        mfr = results["mfr"]
        return {"mfr": {c: (e["mfr"]["mean"] if isinstance(e, dict) else e) for c, e in mfr.items() if "/" not in c}}
    findings = run_dir / "findings.json"
    if findings.is_file():
        return {"findings": {k: verdict_of(f) for k, f in json.loads(findings.read_text()).items()}}
    keep = ("n_items", "fingerprint", "heads", "n_selected")
    return {k: results[k] for k in keep if k in results}
