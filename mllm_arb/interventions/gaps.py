"""Residual writers between decoder layers, besides attention and MLP (Qwen3-VL's DeepStack).

A family names the text model's method that the model calls after some layers as
`method(hidden, positions, values)`, adding `values` (`[n, d]`, row-major over the `[B, T]` boolean
`positions`) to the hidden states there (`ModelAdapter.gap_writer`). Such a write depends on the image
alone, not on the hidden states, so an intervention never changes it. `record_gaps` wraps that method on
the model instance for the passes inside and notes each call's positions and values under the decoder
layer that ran just before it. Code that runs the layers itself (prefix reuse) replays a recorded write
through the model's own method (`Gaps.apply`), cut to the positions it computes and repeated for
stacked variants; the lens reads the write at chosen positions as its own component (`Gaps.written`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GapWrite:
    positions: torch.Tensor  # [B, T] bool
    values: torch.Tensor  # [positions.sum(), d]


class Gaps:
    """The between-layer writes of one recorded pass: `writes[l]` is the write after layer `l`."""

    def __init__(self, adapter) -> None:
        owner = adapter.parts.text_model
        name = adapter.gap_writer
        if name and not hasattr(type(owner), name):
            raise RuntimeError(f"{adapter.family}: {type(owner).__name__} has no method {name!r} (the between-layer writer "
                               "this family declares); the installed transformers may have renamed it")
        # the class's method bound to the model, never a recorder's wrapper on the instance
        self.method = getattr(type(owner), name).__get__(owner) if name else None
        self.name = adapter.gap_component or name
        self.writes: dict[int, GapWrite] = {}

    def __bool__(self) -> bool:
        return bool(self.writes)

    def apply(self, layer: int, hidden: torch.Tensor, n_variants: int = 1, start: int = 0) -> torch.Tensor:
        """`hidden` (`[V*B, T - start, d]`: positions `start..` of `n_variants` stacked copies of the batch)
        after the write recorded after `layer`, through the model's own method; unchanged where nothing
        was written."""
        write = self.writes.get(layer)
        if write is None:
            return hidden
        where = write.positions[:, start:]
        if not bool(where.any()):
            return hidden
        if where.shape[1] != hidden.shape[1] or where.shape[0] * n_variants != hidden.shape[0]:
            raise ValueError(f"a between-layer write over {tuple(where.shape)} positions cannot apply to hidden states of shape {tuple(hidden.shape)}")
        kept = torch.zeros_like(write.positions)
        kept[:, start:] = True
        values = write.values[kept[write.positions].to(write.values.device)]
        # a model split over devices may keep the vision features elsewhere than the hidden states
        where, values = where.to(hidden.device), values.to(hidden.device)
        return self.method(hidden, where.repeat(n_variants, 1), values.repeat(n_variants, 1))

    def touches(self, position: int) -> bool:
        """Whether any recorded write lands on `position` (in some row)."""
        return any(bool(w.positions[:, position].any()) for w in self.writes.values())

    def written(self, layer: int, positions: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`[B, P, d]` what the write after `layer` adds at the `[B, P]` `positions` (zeros where it adds
        nothing), in `like`'s dtype."""
        out = like.new_zeros(*positions.shape, like.shape[-1])
        write = self.writes.get(layer)
        if write is None:
            return out
        full = like.new_zeros(*write.positions.shape, like.shape[-1])
        full[write.positions.to(full.device)] = write.values.to(full.device, full.dtype)
        rows = torch.arange(positions.shape[0], device=positions.device)[:, None]
        return full[rows, positions.to(full.device)]


@contextmanager
def record_gaps(adapter) -> Iterator[Gaps]:
    """Record, during the forward passes inside, the model's between-layer writes (none for a family
    without `gap_writer`). The wrapper calls through whatever the instance had, so recorders nest."""
    gaps = Gaps(adapter)
    if gaps.method is None:
        yield gaps
        return
    owner, name = adapter.parts.text_model, adapter.gap_writer
    after = {"layer": None}

    def note(index: int):
        def hook(module, args, output):
            after["layer"] = index

        return hook

    inner = getattr(owner, name)
    had_own = name in owner.__dict__

    def wrapper(hidden, positions, values):
        if after["layer"] is None:
            raise RuntimeError(f"{name} ran before any decoder layer")
        gaps.writes[after["layer"]] = GapWrite(positions.detach(), values.detach())
        return inner(hidden, positions, values)

    def restore():
        if had_own:
            owner.__dict__[name] = inner
        else:
            owner.__dict__.pop(name, None)

    with ExitStack() as stack:
        for index, layer in enumerate(adapter.parts.layers):
            stack.callback(layer.register_forward_hook(note(index)).remove)
        owner.__dict__[name] = wrapper
        stack.callback(restore)
        yield gaps
