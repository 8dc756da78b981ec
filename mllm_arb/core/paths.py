"""Where the project's own files live: the configuration, and the organisms shipped in the package.

Importing this module is cheap (no torch, no Hydra).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: the natural organism's checkpoint (`model=organism`), shipped in the package with its MODEL_CARD.md
CHECKPOINT_DIR = PACKAGE_DIR / "organism" / "checkpoint"
#: the planted organism (`model=organism_anchor`): the study's route by construction, with ground_truth.json
ANCHOR_DIR = PACKAGE_DIR / "organism" / "anchor"
#: set to use another configuration folder than the project's own
CONF_ENV = "MLLM_ARB_CONF"


def conf_dir() -> Path:
    """The Hydra configuration folder: `$MLLM_ARB_CONF`, else the copy a built wheel carries inside the
    package (`mllm_arb/conf/`), else the repository's top-level `conf/` (a source checkout)."""
    env = os.environ.get(CONF_ENV)
    if env:
        return Path(env)
    packaged = PACKAGE_DIR / "conf"
    return packaged if (packaged / "config.yaml").is_file() else PACKAGE_DIR.parent / "conf"


def checkpoint_path() -> Path:
    """The shipped checkpoint folder (loadable with `from_pretrained`)."""
    if not (CHECKPOINT_DIR / "config.json").exists():
        raise UserError(f"the organism checkpoint is missing from {CHECKPOINT_DIR}; train one with `mllm-arb organism train`")
    return CHECKPOINT_DIR


def anchor_path() -> Path:
    """The planted organism's folder (weights, ground_truth.json, MODEL_CARD.md)."""
    if not (ANCHOR_DIR / "config.json").exists():
        raise UserError(f"the planted organism is missing from {ANCHOR_DIR}; train it with "
                        "`mllm-arb organism train --config anchor --ship`")
    return ANCHOR_DIR
