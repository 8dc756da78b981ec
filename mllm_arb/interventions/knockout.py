"""Attention knockout: forbid target positions to attend to source positions in chosen decoder layers.

How (and why this way): the knockout edits the mask the model itself built, inside the attention call,
so whatever the family put in it survives untouched: Gemma 3's bidirectional attention inside images,
sliding windows, padding, and Qwen2-VL's 3-D rotary positions (which a hand-made 4-D mask would
break). Concretely, for the duration of the block:

1. an attention function wrapping the text model's configured implementation (eager or sdpa) is
   registered under a fresh name in transformers' `AttentionInterface`; in the chosen layers
   (`module.layer_idx`) it ANDs the knockout into the mask it receives, elsewhere it passes through;
2. the same name is registered in the mask registry (`AttentionMaskInterface`), pointing at the
   wrapped implementation's mask builder: a name the mask registry does not know gets *no mask at all*
   (causal and padding masking would silently vanish);
3. only the text model's attention implementation is switched to that name (the vision tower keeps
   its own), and the previous one is restored on exit, also when the block raises.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..errors import UserError
from ..models.adapter import GROUPS, Batch

#: implementations a knockout can wrap: their masks are plain tensors we can edit
WRAPPABLE = ("eager", "sdpa")
_PREFIX = "mllm_arb_knockout_"  # must not contain "sdpa": transformers would run sdpa dispatch checks on it
_counter = itertools.count()
#: registered knockout name -> the plain implementation at the bottom of its chain (for nested knockouts)
_ROOT_IMPL: dict[str, str] = {}


def default_window_size(n_layers: int) -> int:
    """An odd window near a quarter of the depth, at least 1 (mission §4: 7 for a 28-layer model)."""
    size = max(1, round(n_layers / 4))
    if size % 2 == 0:
        size = size + 1 if size + 1 <= n_layers else size - 1
    return size


def layer_window(center: int, size: int, n_layers: int) -> list[int]:
    """The consecutive layers of a window of `size` centred on `center`, clipped to the decoder."""
    if size < 1:
        raise ValueError(f"window size must be at least 1, not {size}")
    start = center - (size - 1) // 2
    return [l for l in range(start, start + size) if 0 <= l < n_layers]


def knockout_mask(batch: Batch, edges: Sequence[tuple[str, str]]) -> torch.Tensor:
    """`[B, T, T]` bool, True where query row t may not attend to key column s (per row: spans differ).

    An edge `(src, dst)` blocks rows of group `dst` from columns of group `src`. A position is never
    blocked from itself: a row whose every allowed column was blocked would otherwise softmax over
    nothing and turn into NaN, and the diagonal is the one column every row is always allowed.
    """
    ids = batch.inputs["input_ids"]
    n_rows, n_tok = ids.shape
    block = torch.zeros(n_rows, n_tok, n_tok, dtype=torch.bool, device=ids.device)
    for edge in edges:
        if len(edge) != 2:
            raise ValueError(f"an edge is a (source, target) pair of groups, not {edge!r}")
        src, dst = edge
        for group in (src, dst):
            if group not in GROUPS:
                raise UserError(f"unknown token group {group!r}; groups: {', '.join(GROUPS)}")
        block |= batch.group_mask(dst)[:, :, None] & batch.group_mask(src)[:, None, :]
    block &= ~torch.eye(n_tok, dtype=torch.bool, device=ids.device)
    return block


class _Knockout:
    """The state one knockout block registers: what to block, in which layers per row, and what it wraps."""

    def __init__(self, name: str, base_impl: str, block: torch.Tensor, row_layers: Sequence[frozenset[int]]) -> None:
        self.name = name
        self.base_impl = base_impl
        self.root_impl = _ROOT_IMPL.get(base_impl, base_impl)
        self.block = block
        self.row_layers = row_layers
        self.active = bool(block.any())  # an empty knockout leaves every call exactly as it was

    def block_at(self, layer) -> torch.Tensor | None:
        """`[B, T, T]` what is blocked in `layer` (rows whose layers exclude it block nothing), or None."""
        if not self.active:
            return None
        rows = torch.tensor([layer in ls for ls in self.row_layers], device=self.block.device)
        if not rows.any():
            return None
        return self.block if rows.all() else self.block & rows[:, None, None]

    # ------------------------------------------------------------------ dispatch
    def base_attention(self, module):
        return eager_attention_of(module) if self.base_impl == "eager" else ALL_ATTENTION_FUNCTIONS[self.base_impl]

    def mask(self, *args, **kwargs):
        """Mask building is the wrapped implementation's own, untouched (edits happen per layer)."""
        return ALL_MASK_ATTENTION_FUNCTIONS[self.base_impl](*args, **kwargs)

    def attention(self, module, query, key, value, attention_mask, *args, **kwargs):
        base = self.base_attention(module)
        block = self.block_at(getattr(module, "layer_idx", None))
        if block is not None:
            attention_mask = self.edit(block, module, query, key, attention_mask, kwargs)
        return base(module, query, key, value, attention_mask, *args, **kwargs)

    # ------------------------------------------------------------------ the edit
    @staticmethod
    def _blocked(block: torch.Tensor, n_q: int, n_k: int, device) -> torch.Tensor:
        """`[B, 1, n_q, n_k]` blocked entries; queries are the last n_q of the n_k key positions."""
        n_tok = block.shape[1]
        block = block.to(device)
        if n_k > n_tok:  # positions generated after the prompt belong to no group
            block = torch.nn.functional.pad(block, (0, n_k - n_tok, 0, n_k - n_tok))
        else:
            block = block[:, :n_k, :n_k]
        return block[:, n_k - n_q :, :][:, None]

    def edit(self, block, module, query, key, attention_mask, kwargs) -> torch.Tensor:
        n_rows, n_q = query.shape[0], query.shape[2]
        n_k = attention_mask.shape[-1] if attention_mask is not None else key.shape[2]
        if n_rows != block.shape[0]:
            raise UserError(f"knockout built for {block.shape[0]} rows but the forward pass has {n_rows}")
        blocked = self._blocked(block, n_q, n_k, query.device)
        if attention_mask is None:
            # sdpa's causal shortcut (or an unmasked bidirectional layer): materialise what it stood for.
            causal = kwargs.get("is_causal")
            causal = getattr(module, "is_causal", True) if causal is None else causal
            allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device)
            if causal and n_q > 1:
                allowed = allowed.tril()  # sdpa's is_causal aligns upper-left
            allowed = allowed[None, None]
            if self.root_impl == "eager":  # eager adds its mask: give it an additive one
                zero = torch.zeros((), dtype=query.dtype, device=query.device)
                attention_mask = torch.where(allowed, zero, torch.finfo(query.dtype).min)
            else:
                attention_mask = allowed
        if attention_mask.dtype == torch.bool:
            return attention_mask & ~blocked
        # additive mask: the same large negative value the model's own causal mask uses (exactly 0 after softmax)
        return torch.where(blocked, torch.finfo(attention_mask.dtype).min, attention_mask)


def eager_attention_of(module):
    """The eager attention function of `module`'s model file.

    "eager" is no registry entry: each model file defines its own `eager_attention_forward` (Gemma's
    adds softcapping), the one its attention class falls back to.
    """
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise UserError(f"{type(module).__name__}: no eager_attention_forward in {type(module).__module__}")
    return fn


def _text_config_key(model) -> str | None:
    """The sub-config key of the text model (None when the model's own config is the text config)."""
    text_cfg = model.config.get_text_config()
    if text_cfg is model.config:
        return None
    for key in model.config.sub_configs:
        if getattr(model.config, key, None) is text_cfg:
            return key
    raise UserError(f"{type(model).__name__}: cannot tell which sub-config is the text model's")


def _set_text_attention(model, impl: str) -> None:
    key = _text_config_key(model)
    model.set_attn_implementation(impl if key is None else {key: impl})
    if model.config.get_text_config()._attn_implementation != impl:
        raise UserError(f"{type(model).__name__}: could not switch the text model's attention to {impl!r}")


@contextmanager
def knock_out(adapter, batch: Batch, edges: Sequence[tuple[str, str]], layers: Iterable[int]) -> Iterator[torch.Tensor]:
    """Within the block, rows of group `dst` may not attend to columns of group `src` for every edge
    `(src, dst)`, in the decoder layers `layers` only, for forward passes over `batch` (same rows).

    Yields the `[B, T, T]` blocked-entry mask. The text model keeps its eager or sdpa attention; only
    the mask of the chosen layers changes. Knockouts nest (an inner one wraps the outer one).
    """
    block = knockout_mask(batch, edges)
    layers = frozenset(int(l) for l in layers)
    with knock_out_rows(adapter, block, [layers] * len(batch)):
        yield block


@contextmanager
def knock_out_rows(adapter, block: torch.Tensor, row_layers: Sequence[Iterable[int]]) -> Iterator[None]:
    """`knock_out` with a blocked-entry mask given per row (`[N, T, T]`, True: query row t may not attend
    to key column s) and, per row, the layers it applies in: stacked variants of a batch (other edges,
    other windows) run as one pass."""
    model, parts = adapter.model, adapter.parts
    if len(row_layers) != block.shape[0]:
        raise ValueError(f"{len(row_layers)} per-row layer sets for a knockout of {block.shape[0]} rows")
    row_layers = [frozenset(int(l) for l in ls) for ls in row_layers]
    bad = sorted({l for ls in row_layers for l in ls if not 0 <= l < parts.n_layers})
    if bad:
        raise UserError(f"layers {bad} out of range: the text decoder has {parts.n_layers} layers")
    for i, layer in enumerate(parts.layers):
        # The attention function only sees the attention module; its `layer_idx` must be the layer's index.
        if getattr(layer.self_attn, "layer_idx", None) != i:
            raise UserError(f"{type(layer.self_attn).__name__} of layer {i} does not carry layer_idx={i}")
    base_impl = model.config.get_text_config()._attn_implementation
    if base_impl not in WRAPPABLE and base_impl not in _ROOT_IMPL:
        raise UserError(
            f"attention knockout needs eager or sdpa attention, not {base_impl!r}; "
            "load the model with attn_implementation='sdpa' (or 'eager' for attention weights)"
        )
    name = f"{_PREFIX}{next(_counter)}"
    ko = _Knockout(name, base_impl, block, row_layers)
    AttentionInterface.register(name, ko.attention)
    AttentionMaskInterface.register(name, ko.mask)
    _ROOT_IMPL[name] = ko.root_impl
    try:
        _set_text_attention(model, name)
        try:
            yield
        finally:
            _set_text_attention(model, base_impl)
    finally:
        # `register` writes the class-wide mapping; unregistering is removing the entry from it again.
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)
        _ROOT_IMPL.pop(name, None)
