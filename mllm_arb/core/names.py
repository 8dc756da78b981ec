"""Names every layer shares: the study's stage commands, the pooled row, the ranking methods' files."""

from __future__ import annotations

#: the study's stage commands, in the order `run` chains them
STAGES = ("build-data", "evaluate", "analyze", "rank-heads", "ablate", "amplify")
#: commands whose run directory holds child stage runs
PARENTS = ("run", "validate")
#: every command that writes a run directory and can be a grid job
GRID_COMMANDS = (*STAGES, "run")
#: commands that split their batches over the ranks of a torchrun launch
SHARDABLE = ("evaluate", "analyze", "rank-heads", "ablate", "amplify")
#: the child runs `validate` needs, in the order it runs them
VALIDATE_NEEDS = ("analyze", "rank-heads", "ablate")
#: the settings pooled together: the headline row of the head stages
POOLED = "conflict"
