"""`python -m mllm_arb.organism [--ship] [key=value ...]`: train the organism from `conf/organism/default.yaml`.

With `--ship`, train into the package's checkpoint folder, then evaluate it on 1,000 held-out items per
condition and write `MODEL_CARD.md` (the same calls a project CLI command should make).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads crawl on shared cores


def default_config_path() -> Path:
    return Path(__file__).resolve().parents[2] / "conf" / "organism" / "default.yaml"


def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    from . import CHECKPOINT_DIR
    from .card import document
    from .train import train

    args = list(sys.argv[1:] if argv is None else argv)
    ship = "--ship" in args
    overrides = [a for a in args if a != "--ship"]
    cfg = OmegaConf.merge(OmegaConf.load(default_config_path()), OmegaConf.from_dotlist(overrides))
    if ship:
        cfg.output_dir, cfg.overwrite = str(CHECKPOINT_DIR), True
    path = train(cfg)
    if ship:
        results = document(path, threads=cfg.threads)
        print({c: round(v["rate"], 4) for c, v in results["summary"].items()}, results["targets_met"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
