"""The model organism: a small LLaVA-class model trained by the project on synthetic conflict data,
shipped inside the package (`checkpoint/`, with its `MODEL_CARD.md`).

Importing this package is cheap (no torch); training lives in `train.py`, the parts in `build.py`.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"


def checkpoint_path() -> Path:
    """The shipped checkpoint folder (loadable with `from_pretrained`)."""
    from ..errors import UserError

    if not (CHECKPOINT_DIR / "config.json").exists():
        raise UserError(f"the organism checkpoint is missing from {CHECKPOINT_DIR}; train one with `mllm-arb organism train`")
    return CHECKPOINT_DIR


__all__ = ["CHECKPOINT_DIR", "checkpoint_path"]
