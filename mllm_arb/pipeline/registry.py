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
