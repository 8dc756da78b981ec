"""The study's stage commands and the function behind each (`core.names.STAGES` in `run` order)."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from ..core.errors import UserError
from ..core.names import STAGES
from ..runtime.stage import StageResult
from .analyze.stage import analyze_stage
from .build_data.stage import build_data_stage
from .evaluate.stage import evaluate_stage
from .heads.ablate import ablate_stage
from .heads.amplify import amplify_stage
from .heads.rank import rank_stage

StageFunction = Callable[[DictConfig], StageResult]

_FUNCTIONS: dict[str, StageFunction] = {
    "build-data": build_data_stage,
    "evaluate": evaluate_stage,
    "analyze": analyze_stage,
    "rank-heads": rank_stage,
    "ablate": ablate_stage,
    "amplify": amplify_stage,
}
assert tuple(_FUNCTIONS) == STAGES


def stage_function(command: str) -> StageFunction:
    try:
        return _FUNCTIONS[command]
    except KeyError:
        raise UserError(f"no stage {command!r}; stages are {', '.join(STAGES)}") from None


def check_known_values(cfg: DictConfig) -> None:
    """The values the schema cannot know (condition names, edges, ranking methods, what the sweep asks for
    as a whole), checked for every command at once: `run` would otherwise find a bad `sweep` value only
    after evaluate and analyze had run."""
    from ..core.records import parse_conditions
    from .analyze.flow import parse_edge
    from .heads.config import SweepConfig

    parse_conditions(cfg.conditions, "conditions")
    parse_conditions(cfg.analysis.settings, "analysis.settings")
    for edge in cfg.analysis.edges:
        try:
            parse_edge(edge)
        except ValueError as exc:
            raise UserError(f"analysis.edges: {exc}") from None
    SweepConfig.from_cfg(cfg.sweep)
