"""`--resume RUN_DIR`: check that a run directory can be resumed and give back the config it ran with.

A resumed run always uses the config saved in RUN_DIR. Overrides given beside `--resume` are only
checked against it: any difference is refused, because the saved batches were computed under the saved
config and mixing them with new ones would give a table no single run could have produced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..core.errors import UserError
from .units import FOLDER


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if obj or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: obj}


def config_differences(saved: DictConfig, wanted: DictConfig) -> list[str]:
    """`key: saved → wanted` for every leaf that differs (missing leaves shown as <absent>)."""
    a = _flatten(OmegaConf.to_container(saved, resolve=True))
    b = _flatten(OmegaConf.to_container(wanted, resolve=True))
    absent = "<absent>"
    return [f"{k}: {a.get(k, absent)!r} → {b.get(k, absent)!r}" for k in sorted(set(a) | set(b)) if a.get(k, absent) != b.get(k, absent)]


def resume_config(run_dir: Path, command: str, wanted: DictConfig | None) -> DictConfig:
    """The saved config of an unfinished `command` run in `run_dir` (raises UserError otherwise).
    `wanted`, the config composed from overrides given beside --resume, must equal it."""
    run_dir = Path(run_dir)
    where = f"--resume {run_dir}"
    if not run_dir.is_dir():
        raise UserError(f"{where}: no such directory")
    config, manifest = run_dir / "config.yaml", run_dir / "manifest.json"
    if not config.is_file() or not manifest.is_file():
        raise UserError(f"{where}: not a run directory (no config.yaml and manifest.json)")
    try:
        made_by = json.loads(manifest.read_text()).get("command")
        saved = OmegaConf.load(config)
    except Exception as exc:  # noqa: BLE001 - a damaged file is bad input, not a crash
        raise UserError(f"{where}: unreadable run files ({type(exc).__name__})") from None
    if made_by != command:
        raise UserError(f"{where}: a {made_by!r} run, not {command!r}; resume it with `mllm-arb {made_by} --resume`")
    if (run_dir / "results.json").exists():
        raise UserError(f"{where}: the run is complete (results.json exists); nothing to resume")
    if wanted is not None:
        diff = config_differences(saved, wanted)
        if diff:
            more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
            raise UserError(f"{where}: the overrides give another config than the saved one: {'; '.join(diff[:3])}{more}; "
                            "resume without overrides (the saved config is used), or start a new run")
    assert isinstance(saved, DictConfig)
    return saved


def saved_units(run_dir: Path) -> dict[str, int]:
    """How many batches each stage of a run has saved so far."""
    root = Path(run_dir) / FOLDER
    if not root.is_dir():
        return {}
    return {p.name: sum(1 for f in p.glob("*.json") if f.stem.isdigit()) for p in sorted(root.iterdir()) if p.is_dir()}
