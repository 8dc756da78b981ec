"""Per-head interventions at the input of each decoder layer's attention output projection.

A head's output is its slice of the input of `o_proj` (`[B, T, n_heads * head_dim]`, the same layout on
every family, GQA included): editing that slice before the projection removes or amplifies exactly what
the head writes into the residual stream. Editing the projection's *output* could not tell heads apart.

Everything here is a forward pre-hook registered inside a context manager, removed on exit even when
the body raises, so a model is never left edited.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UserError
from ..core.heads_file import Head, HeadSet, check_model, n_selected, read_head_set
from ..models.adapter import Batch, DecoderParts, find_decoder_parts


@dataclass(frozen=True, eq=False)  # eq on tensor fields would be ambiguous; identity is enough
class HeadEdit:
    """What to do to one head's output: `mean + scale * (output - mean)` at the selected positions.

    - `scale=0` with no mean: zero-ablation; `scale=alpha > 1`: amplification; `scale=1`: untouched.
    - `mean` (`[head_dim]`, or anything broadcastable to `[B, T, head_dim]`): mean-ablation with
      `scale=0` (the slice is replaced by the mean).
    - `positions` (`[B, T]` bool): edit only there; None falls back to the `positions` given to
      `edit_heads`, and when that is None too, every position is edited.
    """

    layer: int
    head: int
    scale: float = 0.0
    mean: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    @property
    def is_identity(self) -> bool:
        """Scale 1 without a mean changes nothing (`* 1.0` is bit-identical), so it needs no work."""
        return self.mean is None and self.scale == 1

    def apply(self, out: torch.Tensor) -> torch.Tensor:
        """The edited head output, for a `[..., head_dim]` slice."""
        if self.mean is None:
            if self.scale == 0:
                return torch.zeros_like(out)  # not `out * 0`: that keeps -0.0 and turns inf into NaN
            return out * self.scale  # `* 1.0` is bit-identical, so scale 1 changes nothing
        mean = self.mean.to(device=out.device, dtype=out.dtype)
        if self.scale == 0:
            return mean.expand_as(out)
        return mean + self.scale * (out - mean)


def scale_heads(heads: Iterable[tuple[int, int]], scale: float, positions: torch.Tensor | None = None) -> list[HeadEdit]:
    """One `HeadEdit` per (layer, head), all with the same scale."""
    return [HeadEdit(layer=int(l), head=int(h), scale=float(scale), positions=positions) for l, h in heads]


def mean_ablate_heads(heads: Iterable[tuple[int, int]], means: dict[tuple[int, int], torch.Tensor]) -> list[HeadEdit]:
    """One mean-ablating `HeadEdit` per (layer, head), with the mean taken from `means[(layer, head)]`."""
    return [HeadEdit(layer=int(l), head=int(h), scale=0.0, mean=means[(l, h)]) for l, h in heads]


def decoder_parts(obj) -> DecoderParts:
    """`DecoderParts` of an adapter, of a loaded model (found by introspection), or the parts themselves."""
    if isinstance(obj, DecoderParts):
        return obj
    parts = getattr(obj, "parts", None)
    if isinstance(parts, DecoderParts):
        return parts
    if isinstance(obj, nn.Module):
        return find_decoder_parts(obj)
    raise TypeError(f"expected a ModelAdapter, a model or DecoderParts, not {type(obj).__name__}")


def _check_head(parts: DecoderParts, layer: int, head: int) -> None:
    if not 0 <= layer < parts.n_layers:
        raise ValueError(f"layer {layer} out of range: the text decoder has {parts.n_layers} layers")
    if layer in parts.linear:
        raise ValueError(f"layer {layer} mixes by linear attention: it has no attention heads to edit or record")
    if not 0 <= head < parts.n_heads:
        raise ValueError(f"head {head} out of range: layers have {parts.n_heads} attention heads")


def _select(positions: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A `[B, T, 1]` mask for `x` (`[B, T, H, D]`), or None for every position."""
    if positions is None:
        return None
    if positions.shape != x.shape[:2]:
        # The mask names prompt positions; a decoding step (T = 1 with a cache) has no defined match.
        raise ValueError(
            f"head-edit positions have shape {tuple(positions.shape)} but the attention input is "
            f"{tuple(x.shape[:2])} (batch, tokens); position-restricted edits apply to full prompt passes only"
        )
    return positions.to(device=x.device, dtype=torch.bool)[..., None]


@contextmanager
def edit_heads(model_or_adapter, edits: Sequence[HeadEdit], positions: torch.Tensor | None = None) -> Iterator[None]:
    """Apply `edits` to every forward pass run inside the block.

    One pre-hook per edited layer rewrites the o_proj input out of place (a clone with the edited slices
    written in), so autograd through the edit keeps working and the caller's tensors are never mutated.
    `positions` (`[B, T]` bool) restricts every edit that names no positions of its own.
    """
    parts = decoder_parts(model_or_adapter)
    by_layer: dict[int, list[HeadEdit]] = {}
    for edit in edits:
        _check_head(parts, edit.layer, edit.head)
        by_layer.setdefault(edit.layer, []).append(edit)

    def make_hook(layer: int, layer_edits: list[HeadEdit]):
        layer_edits = [e for e in layer_edits if not e.is_identity]

        def hook(module, args):
            if not layer_edits:
                return None
            x = args[0]
            heads = x.reshape(*x.shape[:-1], parts.n_heads, parts.head_dim(layer))
            new = heads.clone()
            for edit in layer_edits:
                where = _select(edit.positions if edit.positions is not None else positions, heads)
                before = new[..., edit.head, :].clone()  # edits of the same head compose in order
                after = edit.apply(before)
                new[..., edit.head, :] = after if where is None else torch.where(where, after, before)
            return (new.reshape(x.shape), *args[1:])

        return hook

    with ExitStack() as stack:
        for layer, layer_edits in by_layer.items():
            handle = parts.o_proj(layer).register_forward_pre_hook(make_hook(layer, layer_edits))
            stack.callback(handle.remove)
        yield


@contextmanager
def steer_heads(model_or_adapter, heads: Sequence[tuple[int, int]], scale: float) -> Iterator[None]:
    """Scale the outputs of `heads` ((layer, head) pairs) by `scale` at every position, for inference.

    Works on a plain loaded model too (the decoder is found by introspection), and across `generate`:
        with steer_heads(model, [(14, 3), (15, 0)], scale=2.0):
            model.generate(**inputs)
    """
    with edit_heads(model_or_adapter, scale_heads(heads, scale)):
        yield


@contextmanager
def record_heads(model_or_adapter, layers: Iterable[int] | None = None, detach: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Record per-head outputs (`{layer: [B, T, n_heads, head_dim]}`) of the forward passes run inside
    (`layers`: by default every layer with attention heads).

    With `detach=False` the recorded tensors stay in the autograd graph (views of the o_proj input),
    so `torch.autograd.grad(metric, list(record.values()))` gives the gradients for attribution patching.
    A later pass overwrites an earlier one's entry. Hooks registered after this one (e.g. an
    `edit_heads` entered inside this block) act after the recording, so the record shows unedited outputs.
    """
    parts = decoder_parts(model_or_adapter)
    layers = parts.head_layers if layers is None else [int(l) for l in layers]
    record: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module, args):
            x = args[0]
            heads = x.reshape(*x.shape[:-1], parts.n_heads, parts.head_dim(layer))
            if detach:
                record[layer] = heads.detach()
                return None
            # Feed the per-head view itself onward (same values), so it is a node of the graph that
            # gradients flow through; a reshape made only for the record would be a dead end.
            record[layer] = heads
            return (heads.reshape(x.shape), *args[1:])

        return hook

    with ExitStack() as stack:
        for layer in layers:
            _check_head(parts, layer, 0)
            handle = parts.o_proj(layer).register_forward_pre_hook(make_hook(layer))
            stack.callback(handle.remove)
        yield record


@torch.no_grad()
def head_outputs(adapter, batch: Batch, layers: Iterable[int] | None = None) -> dict[int, torch.Tensor]:
    """Per-head outputs `{layer: [B, T, n_heads, head_dim]}` of one forward pass over `batch`."""
    with record_heads(adapter, layers) as record:
        adapter.model(**batch.inputs, use_cache=False)
    return dict(record)


def mean_head_outputs(outputs: dict[int, torch.Tensor], positions: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
    """Mean of each head's output over the selected positions (`[B, T]` bool), for mean-ablation."""
    sel = positions.to(torch.bool)
    means = {}
    for layer, out in outputs.items():
        picked = out[sel.to(out.device)]  # [N, n_heads, head_dim]
        for head in range(out.shape[-2]):
            means[(layer, head)] = picked[:, head].mean(0)
    return means


@contextmanager
def use_head_set(model_or_adapter, head_set: HeadSet | str | Path, scale: float = 0.0,
                 top_k: float | None = None, top_n: int | None = None) -> Iterator[tuple[Head, ...]]:
    """Block (`scale=0`) or amplify (`scale=α`) a head set's heads at every position, for inference.

        from mllm_arb.interventions import use_head_set
        with use_head_set(model, "outputs/rank-heads/organism/…/heads.json", scale=0.0):
            model.generate(**inputs)           # the top heads zeroed

    Without `top_k`/`top_n` the file's selected `heads` are used. Works on a plain Hugging Face model
    too (the decoder is found by introspection); the file's shape must match the model's.
    """
    hs = head_set if isinstance(head_set, HeadSet) else read_head_set(head_set)
    parts = decoder_parts(model_or_adapter)
    hs = check_model(hs, hs.model, parts.n_layers, parts.n_heads, layers_without_heads=parts.linear)
    if scale < 0:
        raise UserError(f"scale {scale} must be >= 0 (0 blocks, > 1 amplifies)")
    heads = hs.heads if top_k is None and top_n is None else hs.top(n_selected(hs.total, top_k, top_n))
    with steer_heads(model_or_adapter, heads, scale):
        yield heads
