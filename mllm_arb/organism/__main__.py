"""`python -m mllm_arb.organism [--config anchor] [--ship] [key=value ...]`: train an organism from
`conf/organism/default.yaml` (with `--config NAME`: `conf/organism/NAME.yaml` on top of it); the same
as `mllm-arb organism train`.

With `--ship`, train into the package's checkpoint folder of that organism (`checkpoint/` for the
natural one, `anchor/` for the planted one), then evaluate it on 1,000 held-out items per condition and
write `MODEL_CARD.md`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads crawl on shared cores


#: the organisms the package ships; other configs (the seed replicates) train into their output_dir only
SHIPPED = ("default", "anchor")


def organism_config(name: str = "default", overrides: list[str] | None = None):
    """The training config of organism `name` (`conf/organism/NAME.yaml`: the planted organism's file puts
    its keys on top of default.yaml), then the overrides. Every file starts from `train_schema`, the typed
    defaults of `TrainConfig`: an ill-typed value fails here."""
    from hydra.core.config_store import ConfigStore

    from ..core.errors import UserError
    from ..core.paths import conf_dir
    from ..runtime.config import compose
    from .train import TrainConfig

    folder = conf_dir() / "organism"
    if not (folder / f"{name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise UserError(f"no organism config {name!r}; configs: {known}")
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    return compose(overrides, name, folder)


def train_and_ship(name: str, cfg, ship: bool) -> Path:
    """Train organism `name` with its composed config; with `ship`, into the package, then its card."""
    from ..core.errors import UserError
    from ..core.paths import ANCHOR_DIR, CHECKPOINT_DIR
    from .train import train

    planted = name.startswith("anchor")
    if ship and name not in SHIPPED:
        raise UserError(f"--ship trains into the package, which ships only {' and '.join(SHIPPED)}; "
                        f"train {name!r} without --ship (into output_dir={cfg.output_dir})")
    if ship:
        cfg.output_dir, cfg.overwrite = str(ANCHOR_DIR if planted else CHECKPOINT_DIR), True
    path = train(cfg)
    if ship and planted:
        from .anchor_card import document_anchor

        done = document_anchor(path, threads=cfg.threads)
        print({c: round(v["rate"], 4) for c, v in done["results"]["summary"].items()}, done["plant"]["closed_worst"])
    elif ship:
        from .card import document

        results = document(path, threads=cfg.threads)
        print({c: round(v["rate"], 4) for c, v in results["summary"].items()}, results["targets_met"])
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m mllm_arb.organism [--config NAME] [--ship] [key=value ...]`, the entry point background
    training runs use; bad input is one line on stderr and exit code 2, as in `mllm-arb organism train`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..core.errors import UserError
    from ..runtime.config import config_error_line

    args = list(sys.argv[1:] if argv is None else argv)
    ship = "--ship" in args
    name = "default"
    try:
        if "--config" in args:
            at = args.index("--config")
            if at + 1 >= len(args):
                raise UserError("--config needs a name (conf/organism/<NAME>.yaml)")
            name = args[at + 1]
            del args[at : at + 2]
        overrides = [a for a in args if a != "--ship"]
        train_and_ship(name, organism_config(name, overrides), ship)
    except (UserError, ValueError, FileExistsError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {config_error_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
