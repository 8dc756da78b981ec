"""Record the text decoder's attention weights *inside the autograd graph*, for attention saliency.

`output_attentions=True` would also ask the vision tower for its weights and needs the whole model on
eager attention. Instead, for the duration of the block, the text model's attention goes through a
registered function that calls the model file's own `eager_attention_forward` (whatever the model was
loaded with: the weights exist only under eager) and keeps the weights it returns, not detached, so
`torch.autograd.grad(score, weights)` gives ∂score/∂A for every layer. The vision tower keeps its own
implementation; the previous text implementation is restored on exit, also when the block raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..core.errors import UserError
from .attention_interface import eager_attention_of, text_attention


@contextmanager
def record_attention_weights(adapter) -> Iterator[dict[int, torch.Tensor]]:
    """Yields `{layer: [B, H, T_q, T_k] attention weights}`, filled by each forward pass in the block."""
    weights: dict[int, torch.Tensor] = {}

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        out, w = eager_attention_of(module)(module, query, key, value, attention_mask, *args, **kwargs)
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise UserError(f"{type(module).__name__} carries no layer_idx: cannot tell which layer its weights belong to")
        weights[int(layer)] = w
        return out, w

    with text_attention(adapter.model, attention, mask_impl="eager", root_impl="eager"):
        yield weights
