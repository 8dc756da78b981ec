"""The composed configuration of a command: Hydra's compose API over `core.paths.conf_dir()`, resolved
at once (a missing mandatory value fails before any work), or a resumed run's saved config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..core import prompt
from ..core.errors import UserError
from ..core.paths import conf_dir
from .schema import check_ranges, register

register()  # the typed nodes conf/config.yaml and the data options start from

# `${prompt:TEXT_INSTRUCTION}` in conf/config.yaml: the study's sentences are written once, in core.prompt
if not OmegaConf.has_resolver("prompt"):
    OmegaConf.register_new_resolver("prompt", lambda name: getattr(prompt, name))


def compose(overrides: list[str] | None, config_name: str = "config", folder: Path | None = None) -> DictConfig:
    """`config_name` of `folder` (default: the project's configuration) with the overrides; unresolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(folder or conf_dir()), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def resolved(overrides: list[str] | None) -> DictConfig:
    """The command configuration with every interpolation resolved."""
    cfg = compose(overrides)
    OmegaConf.resolve(cfg)  # fail now on a missing mandatory value (???), not half-way through
    check_ranges(cfg)
    return cfg


def configure(command: str, overrides: list[str] | None, resume: Path | None) -> DictConfig:
    """The composed config, or with `resume` the run's saved one (overrides given beside it must agree)."""
    if resume is None:
        return resolved(overrides)
    from .resume import resume_config

    return resume_config(resume, command, resolved(overrides) if overrides else None)


def config_error_line(exc: BaseException) -> str:
    """A Hydra or OmegaConf error in one line: its first line, and why the value did not fit the key's type
    when that is the cause (the rest of their messages is a traceback of the composition)."""
    from omegaconf.errors import OmegaConfBaseException

    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        msg += f": {str(cause).strip().splitlines()[0]}"
    return msg
