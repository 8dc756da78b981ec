"""The configured model, loaded for a stage."""

from __future__ import annotations

from omegaconf import DictConfig

from ..models.adapter import ModelAdapter
from .ranks import Ranks


def load_model(cfg: DictConfig, ranks: Ranks | None = None) -> ModelAdapter:
    """`cfg.model`; under torchrun (`ranks` sharded) on this rank's own GPU."""
    import transformers

    from ..models.loading import load_adapter

    # the stages' own bars report progress; transformers' per-load bars and notices are noise here
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    m = cfg.model
    return load_adapter(
        m.path,
        dtype=m.dtype,
        device=ranks.device(m.device) if ranks is not None else m.device,
        attn_implementation=m.attn_implementation,
        padding_side=m.padding_side,
        name=m.name,
        family=m.get("family"),
    )
