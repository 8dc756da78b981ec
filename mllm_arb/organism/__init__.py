"""The model organism: a small LLaVA-class model trained by the project on synthetic conflict data,
shipped inside the package (`checkpoint/`, with its `MODEL_CARD.md`).

Importing this package is cheap (no torch); training lives in `train.py`, the parts in `build.py`.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
#: the planted organism (`model=organism_anchor`): the study's route by construction, with ground_truth.json
ANCHOR_DIR = Path(__file__).resolve().parent / "anchor"


def checkpoint_path() -> Path:
    """The shipped checkpoint folder (loadable with `from_pretrained`)."""
    from ..errors import UserError

    if not (CHECKPOINT_DIR / "config.json").exists():
        raise UserError(f"the organism checkpoint is missing from {CHECKPOINT_DIR}; train one with `mllm-arb organism train`")
    return CHECKPOINT_DIR


def anchor_path() -> Path:
    """The planted organism's folder (weights, ground_truth.json, MODEL_CARD.md)."""
    from ..errors import UserError

    if not (ANCHOR_DIR / "config.json").exists():
        raise UserError(f"the planted organism is missing from {ANCHOR_DIR}; train it with `python -m mllm_arb.organism --config anchor --ship`")
    return ANCHOR_DIR


__all__ = ["ANCHOR_DIR", "CHECKPOINT_DIR", "anchor_path", "checkpoint_path"]
