"""The configured model, loaded for a stage."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ..core.errors import UserError
from ..core.prompt import render_all
from ..core.records import Condition
from ..data.synthetic import SyntheticConfig, generate_items
from ..interventions.selfcheck import check_measurable
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
    return checked(load_adapter(
        m.path,
        dtype=m.dtype,
        device=ranks.device(m.device) if ranks is not None else m.device,
        attn_implementation=m.attn_implementation,
        padding_side=m.padding_side,
        name=m.name,
        family=m.get("family"),
    ))


def checked(adapter: ModelAdapter) -> ModelAdapter:
    """`adapter`, after a model without a family file passed `check_measurable` on two of the organism's
    conflict items under the text-following instruction (a family's own tests cover a declared family)."""
    if adapter.family != "introspected":
        return adapter
    samples = render_all(generate_items(SyntheticConfig(n_items=2)), [Condition.TEXT_FOLLOWING])
    try:
        check_measurable(adapter, adapter.build_batch(samples))
    except (UserError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        # an unknown model that cannot run a plain prompt fails every stage: say so at the door
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model {adapter.name!r} ({adapter.model.config.model_type}, no family file): a forward pass over "
                        f"two conflict items failed ({first}); not supported") from exc
    return adapter
