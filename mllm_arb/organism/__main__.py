"""`python -m mllm_arb.organism [--config anchor] [--ship] [key=value ...]`: train an organism from
`conf/organism/default.yaml` (with `--config NAME`: `conf/organism/NAME.yaml` on top of it).

With `--ship`, train into the package's checkpoint folder of that organism (`checkpoint/` for the
natural one, `anchor/` for the planted one), then evaluate it on 1,000 held-out items per condition and
write `MODEL_CARD.md` (the same calls a project CLI command should make).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads crawl on shared cores


def default_config_path(name: str = "default") -> Path:
    return Path(__file__).resolve().parents[2] / "conf" / "organism" / f"{name}.yaml"


def compose(name: str = "default", overrides: list[str] | None = None):
    """The training config of organism `name` (`conf/organism/NAME.yaml`, composed by Hydra: the planted
    organism's file puts its keys on top of default.yaml), then the overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ..errors import UserError

    folder = default_config_path().parent
    if not (folder / f"{name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise UserError(f"no organism config {name!r}; configs: {known}")
    with initialize_config_dir(config_dir=str(folder), version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides or []))


def main(argv: list[str] | None = None) -> int:
    from . import ANCHOR_DIR, CHECKPOINT_DIR
    from .card import document
    from .train import train

    args = list(sys.argv[1:] if argv is None else argv)
    ship = "--ship" in args
    name = "default"
    if "--config" in args:
        at = args.index("--config")
        name = args[at + 1]
        del args[at : at + 2]
    overrides = [a for a in args if a != "--ship"]
    cfg = compose(name, overrides)
    if ship:
        cfg.output_dir, cfg.overwrite = str(ANCHOR_DIR if name.startswith("anchor") else CHECKPOINT_DIR), True
    path = train(cfg)
    if ship and name.startswith("anchor"):
        from .anchor_card import document_anchor

        done = document_anchor(path, threads=cfg.threads)
        print({c: round(v["rate"], 4) for c, v in done["results"]["summary"].items()}, done["plant"]["closed_worst"])
    elif ship:
        results = document(path, threads=cfg.threads)
        print({c: round(v["rate"], 4) for c, v in results["summary"].items()}, results["targets_met"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
