"""Attention knockout: forbid target positions to attend to source positions in chosen decoder layers.

How (and why this way): the knockout edits the mask the model itself built, inside the attention call
(`attention_interface.wrap_text_attention`), so whatever the family put in it survives untouched:
Gemma 3's bidirectional attention inside images, sliding windows, padding, and Qwen2-VL's 3-D rotary
positions (which a hand-made 4-D mask would break). In the chosen layers (`module.layer_idx`) the
wrapper ANDs the knockout into the mask it receives; elsewhere it passes straight through.

Linear-attention layers (Qwen3.5's gated DeltaNet) have no mask: every position reads one recurrent
state that every earlier position wrote into. There, knocking out the edges from sources to targets
means: the targets' output is what it would be had the source positions written nothing into the
state, short convolution included: at a source the state neither decays nor takes a write (β = 0,
g = 0, through the model's own `in_proj_b` and `in_proj_a`, set to -inf there), and the source's
projections reach no other position's query, key or value through the convolution (`in_proj_qkv`'s
output zeroed there). The mixer runs a second time under those edits and the targets' rows are taken
from that run; every other row keeps the plain run's output, as an attention knockout leaves every
other row's attention alone. This holds only when every target is cut from the same sources and no
position is both: otherwise the knockout is refused (`linear_edges`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from ..core.errors import UserError
from ..core.prompt import GROUPS
from ..models.adapter import Batch
from .attention_interface import as_mask, wrap_text_attention


def default_window_size(n_layers: int) -> int:
    """An odd window near a quarter of the depth, at least 1 (docs/method.md §4: 7 for a 28-layer model)."""
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
    """What one knockout block blocks, in which layers per row, and the plain implementation it ends in."""

    def __init__(self, block: torch.Tensor, row_layers: Sequence[frozenset[int]]) -> None:
        self.root_impl = "sdpa"  # set on entering the block, before any forward pass
        self.block = block
        self.row_layers = row_layers
        self.active = bool(block.any())  # an empty knockout leaves every call exactly as it was

    def rows_at(self, layer) -> torch.Tensor | None:
        """`[B]` rows that block something in `layer`, or None for none."""
        if not self.active:
            return None
        rows = torch.tensor([layer in ls for ls in self.row_layers], device=self.block.device)
        return rows if rows.any() else None

    def attention(self, base, module, query, key, value, attention_mask, *args, **kwargs):
        rows = self.rows_at(getattr(module, "layer_idx", None))
        if rows is not None:
            attention_mask = self.edit(rows, module, query, key, attention_mask, kwargs)
        return base(module, query, key, value, attention_mask, *args, **kwargs)

    # ------------------------------------------------------------------ the edit
    @staticmethod
    def _blocked(block: torch.Tensor, n_q: int, n_k: int, device) -> torch.Tensor:
        """`[B, 1 or H, n_q, n_k]` blocked entries of a `[B, T, T]` block (every head) or a
        `[B, H, T, T]` one (per head); queries are the last n_q of the n_k key positions."""
        n_tok = block.shape[-1]
        block = block.to(device)
        if n_k > n_tok:  # positions generated after the prompt belong to no group
            block = torch.nn.functional.pad(block, (0, n_k - n_tok, 0, n_k - n_tok))
        else:
            block = block[..., :n_k, :n_k]
        block = block[..., n_k - n_q :, :]
        return block[:, None] if block.dim() == 3 else block

    def edit(self, rows, module, query, key, attention_mask, kwargs) -> torch.Tensor:
        """The mask with the entries `rows` block in this pass's queries (the last n_q of n_k) removed:
        the block is cut to those queries before rows are selected, so a pass over a few positions
        (a suffix sweep) never copies the whole `[B, T, T]` block."""
        n_rows, n_q = query.shape[0], query.shape[2]
        n_k = attention_mask.shape[-1] if attention_mask is not None else key.shape[2]
        if n_rows != self.block.shape[0]:
            raise UserError(f"knockout built for {self.block.shape[0]} rows but the forward pass has {n_rows}")
        blocked = self._blocked(self.block, n_q, n_k, query.device)
        if not rows.all():
            blocked = blocked & rows.to(query.device)[:, None, None, None]
        if attention_mask is None:
            # sdpa's causal shortcut (or an unmasked bidirectional layer): materialise what it stood for.
            causal = kwargs.get("is_causal")
            causal = getattr(module, "is_causal", True) if causal is None else causal
            allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device)
            if causal and n_q > 1:
                allowed = allowed.tril()  # sdpa's is_causal aligns upper-left
            attention_mask = as_mask(allowed[None, None], self.root_impl, query.dtype)
        if attention_mask.dtype == torch.bool:
            return attention_mask & ~blocked
        # additive mask: the same large negative value the model's own causal mask uses (exactly 0 after softmax)
        return torch.where(blocked, torch.finfo(attention_mask.dtype).min, attention_mask)


@contextmanager
def skipping_sources(mixer: torch.nn.Module, sources: torch.Tensor) -> Iterator[None]:
    """Inside the block, the linear-attention `mixer` (a gated DeltaNet) runs as if the `[B, T]` `sources`
    positions wrote nothing into its recurrent state (see the module docstring), through forward hooks on
    its own projections."""
    def at_sources(value: float):
        def hook(module, args, output):
            where = sources.to(output.device)[..., None]
            if where.shape[:2] != output.shape[:2]:
                raise ValueError(f"sources over {tuple(sources.shape)} positions for a mixer input of {tuple(output.shape[:2])}")
            return output.masked_fill(where, value)

        return hook

    handles = [mixer.in_proj_qkv.register_forward_hook(at_sources(0.0)),
               mixer.in_proj_b.register_forward_hook(at_sources(float("-inf"))),  # β = sigmoid(-inf) = 0: no write
               mixer.in_proj_a.register_forward_hook(at_sources(float("-inf")))]  # g ∝ softplus(-inf) = 0: no decay
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def linear_edges(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sources, targets)`, each `[B, T]`, of a `[B, T, T]` blocked-entry mask that a linear-attention layer
    can knock out exactly: every target cut from every source, no position both. Raises `UserError`
    otherwise, or for a per-head mask (a linear-attention layer mixes with one state for all heads' rows)."""
    if block.dim() != 3:
        raise UserError("a per-head knockout cannot apply to a linear-attention layer: its positions share one recurrent state")
    targets, sources = block.any(-1), block.any(-2)
    if (targets & sources).any() or not torch.equal(block, targets[:, :, None] & sources[:, None, :]):
        raise UserError("a linear-attention layer can only knock out every target from the same sources, no position being "
                        "both (the targets' state is recomputed without the sources' writes); this knockout is not of that form")
    return sources, targets


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
    to key column s; or `[N, H, T, T]`, per attention head) and, per row, the layers it applies in:
    stacked variants of a batch (other edges, other windows) run as one pass."""
    model, parts = adapter.model, adapter.parts
    if block.dim() == 4 and block.shape[1] != parts.n_heads:
        raise UserError(f"a per-head knockout of {block.shape[1]} heads for a model with {parts.n_heads} heads per layer")
    if len(row_layers) != block.shape[0]:
        raise ValueError(f"{len(row_layers)} per-row layer sets for a knockout of {block.shape[0]} rows")
    row_layers = [frozenset(int(l) for l in ls) for ls in row_layers]
    bad = sorted({l for ls in row_layers for l in ls if not 0 <= l < parts.n_layers})
    if bad:
        raise UserError(f"layers {bad} out of range: the text decoder has {parts.n_layers} layers")
    for i, layer in enumerate(parts.layers):
        # The attention function only sees the attention module; its `layer_idx` must be the layer's index.
        if i not in parts.linear and getattr(layer.self_attn, "layer_idx", None) != i:
            raise UserError(f"{type(layer.self_attn).__name__} of layer {i} does not carry layer_idx={i}")
    linear = sorted({l for ls in row_layers for l in ls} & parts.linear)
    if linear:
        linear_edges(block)  # refused before any pass where the form does not allow it
    if adapter.ledger is not None:  # planning: the passes are counted, nothing is masked
        yield
        return
    ko = _Knockout(block, row_layers)
    with ExitStack() as stack:
        root = stack.enter_context(wrap_text_attention(model, ko.attention, "attention knockout"))
        ko.root_impl = root
        for layer in linear:
            stack.callback(parts.attn(layer).register_forward_hook(_linear_knockout(ko, layer), with_kwargs=True).remove)
        yield


def _linear_knockout(ko: _Knockout, layer: int):
    """A forward hook on the linear-attention mixer of `layer`: the rows knocked out there take the
    mixer's output recomputed without the sources' writes (the module docstring)."""
    busy = []

    def hook(module, args, kwargs, output):
        rows = ko.rows_at(layer)
        if rows is None or busy:
            return None
        block = ko.block.to(output.device) & rows.to(output.device)[:, None, None]
        if block.shape[1] != output.shape[1]:
            raise ValueError(f"a knockout over {block.shape[1]} positions for a linear-attention pass over {output.shape[1]}")
        sources, targets = linear_edges(block)
        busy.append(True)
        try:
            # a whole-sequence pass from an empty state: a cache would hand the recurrence the plain run's state
            with skipping_sources(module, sources):
                knocked = module(*args, **{**kwargs, "cache": None})
        finally:
            busy.clear()
        return torch.where(targets[..., None], knocked, output)

    return hook
