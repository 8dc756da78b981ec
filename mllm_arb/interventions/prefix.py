"""Prefix reuse: resume a forward pass at decoder layer l from the residual stream of one plain pass.

An intervention acting from layer l on leaves layers < l as they were, so the input of layer l is the
same for every variant of it. `PrefixRun` runs the model once with forward pre-hooks that record what
each text decoder layer was called with: its hidden states and its keyword arguments exactly as the model
built them (masks, position embeddings, position ids: Qwen2-VL's 3-D rotary, Gemma 3's per-layer-type
masks with bidirectional image attention). A variant then calls the model's own decoder layer modules
from layer l on with those arguments, and the final norm and unembedding at the last positions only.
Nothing of a model's forward is re-implemented: only the loop over the layers is ours, so every hook an
intervention registers inside the layers (head edits, knockout's attention function) acts as usual.

Variants are stacked along the batch: `resume(l, hidden, n_variants=V)` tiles the layer-l input and every
per-row keyword tensor V times, variant-major (rows `v*B .. v*B + B - 1` are variant v), so one pass runs V
interventions whose edits address different row blocks (see `variant_rows`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import torch

from ..models.adapter import Batch


def _tile(value, n_rows: int, times: int, memo: dict):
    """`value` (a layer keyword argument) with every per-row tensor repeated `times` along the batch.

    A tensor is per row when its first dimension is the batch's; a first dimension of 1 broadcasts
    over any batch and stays as it is. Anything else cannot be stacked safely, so it is an error.
    Tensors shared between layers (one mask for many layers) are tiled once (`memo`).
    """
    if times == 1:
        return value
    if isinstance(value, torch.Tensor):
        if id(value) in memo:
            return memo[id(value)]
        if value.ndim == 0 or (value.shape[0] == 1 and n_rows != 1):
            out = value
        elif value.shape[0] == n_rows:
            out = value.repeat(times, *([1] * (value.ndim - 1)))
        else:
            raise ValueError(f"a decoder-layer argument of shape {tuple(value.shape)} has no batch dimension of {n_rows} rows to stack")
        memo[id(value)] = out
        return out
    if isinstance(value, (tuple, list)):
        return type(value)(_tile(v, n_rows, times, memo) for v in value)
    if isinstance(value, dict):
        return {k: _tile(v, n_rows, times, memo) for k, v in value.items()}
    return value


def variant_rows(n_rows: int, n_variants: int, variant: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """`[V*B]` (or `[V*B, T]` given a `[B, T]` mask `where`) selecting variant `variant`'s rows of a stack."""
    if where is None:
        out = torch.zeros(n_variants * n_rows, dtype=torch.bool)
        out[variant * n_rows : (variant + 1) * n_rows] = True
        return out
    out = torch.zeros(n_variants * n_rows, *where.shape[1:], dtype=torch.bool, device=where.device)
    out[variant * n_rows : (variant + 1) * n_rows] = where.to(torch.bool)
    return out


class PrefixRun:
    """One plain forward pass over `batch`, recorded so that later passes can start at any layer.

    `logits` are the plain pass's `[B, V]` last-position logits (`adapter.last_logits`). `states()`
    yields each layer's input in turn; `resume(layer, hidden, V)` finishes the pass from there.
    """

    def __init__(self, adapter, batch: Batch) -> None:
        self.parts = adapter.parts
        self.n_rows = len(batch)
        self.last = torch.tensor(batch.last, device=adapter.device)
        n_layers = self.parts.n_layers
        self._calls: list[dict | None] = [None] * n_layers
        self._first: torch.Tensor | None = None

        def record(index: int):
            def hook(module, args, kwargs):
                if self._calls[index] is not None:
                    raise RuntimeError(f"decoder layer {index} ran twice in one forward pass")
                if len(args) > 1 or (not args and "hidden_states" not in kwargs):
                    raise RuntimeError(f"decoder layer {index} was called with {len(args)} positional arguments; expected the hidden states alone")
                rest = dict(kwargs)
                hidden = args[0] if args else rest.pop("hidden_states")
                self._calls[index] = rest
                if index == 0:
                    self._first = hidden

            return hook

        with ExitStack() as stack:
            for i, layer in enumerate(self.parts.layers):
                stack.callback(layer.register_forward_pre_hook(record(i), with_kwargs=True).remove)
            self.logits = adapter.last_logits(batch)
        missing = [i for i, c in enumerate(self._calls) if c is None]
        if missing:
            raise RuntimeError(f"decoder layers {missing} did not run in the forward pass")

    @property
    def n_layers(self) -> int:
        return self.parts.n_layers

    def _layer(self, index: int, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        out = self.parts.layers[index](hidden, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out  # some layers return (hidden, ...)

    @torch.no_grad()
    def states(self, stop: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """`(l, input of layer l)` for `l = 0 .. stop-1` (every layer by default), each computed from the
        previous one by running one plain layer: one pass's worth of layers in all, one state held."""
        stop = self.n_layers if stop is None else stop
        hidden = self._first
        for index in range(stop):
            yield index, hidden
            if index + 1 < stop:
                hidden = self._layer(index, hidden, self._calls[index])

    @torch.no_grad()
    def resume(self, layer: int, hidden: torch.Tensor, n_variants: int = 1) -> torch.Tensor:
        """`[V*B, vocab]` last-position logits of running layers `layer..` from `hidden` (layer `layer`'s
        input), stacked `n_variants` times along the batch (variant-major)."""
        memo: dict = {}
        h = _tile(hidden, self.n_rows, n_variants, memo)
        for index in range(layer, self.n_layers):
            h = self._layer(index, h, _tile(self._calls[index], self.n_rows, n_variants, memo))
        rows = torch.arange(h.shape[0], device=h.device)
        last = h[rows, self.last.to(h.device).repeat(n_variants)]
        return self.parts.unembed(self.parts.final_norm(last)).float()


def max_variants(adapter, n_tokens: int) -> int:
    """How many variants to stack in one resumed pass so that its transient memory stays about that of
    one plain pass over the same rows.

    Per row and token, a plain pass's largest live activations are the full-sequence logits, the MLP's
    intermediates and the attention scores; a resumed pass computes logits at the last position only,
    so the room the logits took holds `plain / resumed` stacked variants (at least one).
    """
    text = adapter.model.config.get_text_config()
    parts = adapter.parts
    d = int(getattr(text, "hidden_size", parts.n_heads * parts.head_dim))
    ffn = int(getattr(text, "intermediate_size", None) or 4 * d)
    vocab = int(parts.unembed.out_features)
    resumed = 3 * ffn + 4 * d + parts.n_heads * n_tokens
    return max(1, (vocab + resumed) // resumed)
