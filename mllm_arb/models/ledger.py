"""Counting instead of computing: what a run would compute, for `mllm-arb plan`.

With a `Ledger` on an adapter (`adapter.ledger`), every place that runs the model records the call
instead of making it: a full forward pass over a batch (`last_logits`: the vision tower on the batch's
images, then every decoder layer on every position), and each decoder layer that a fast path runs itself
(prefix reuse, suffix and last-position sweeps: its rows and query positions). Everything around those
calls runs as in a real run (batching, the sweeps' scheduling, stacking and chunking by memory), so the
counts are the run's own by construction; the model itself can live on the meta device (no weights).
Scores come back as zeros, so nothing that depends on the model's answers can be planned this way.

`count_calls` measures a real run in the same units with hooks, which is how the tests hold the plan to
what a run does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class Ledger:
    """Calls counted: `layers[(layer, rows, queries)]` decoder-layer calls, `forwards` full forward passes,
    `images` images through the vision tower."""

    layers: Counter = field(default_factory=Counter)
    forwards: int = 0
    images: int = 0

    def layer(self, index: int, rows: int, queries: int) -> None:
        self.layers[(index, int(rows), int(queries))] += 1

    def forward(self, adapter, batch) -> torch.Tensor:
        """Record one full forward pass over `batch`; `[B, vocab]` zero logits (one stored zero)."""
        n_rows, n_tokens = batch.inputs["input_ids"].shape
        self.forwards += 1
        if "pixel_values" in batch.inputs:
            self.images += sum(s.image is not None for s in batch.samples)
        for index in range(adapter.parts.n_layers):
            self.layer(index, n_rows, n_tokens)
        return zero_logits(adapter, n_rows)

    @property
    def layer_calls(self) -> int:
        return sum(self.layers.values())

    @property
    def layer_tokens(self) -> int:
        """Σ rows × query positions over every decoder-layer call: what the layers' linear maps cost."""
        return sum(rows * queries * n for (_, rows, queries), n in self.layers.items())

    def summary(self) -> dict:
        return {"forward_passes": self.forwards, "decoder_layer_calls": self.layer_calls,
                "decoder_layer_tokens": self.layer_tokens, "vision_images": self.images}


def zero_logits(adapter, *lead: int) -> torch.Tensor:
    """`[*lead, vocab]` zeros that take one float of memory."""
    return torch.zeros(1).expand(*lead, int(adapter.parts.unembed.out_features))


@contextmanager
def count_calls(adapter) -> Iterator[Ledger]:
    """Count, during the real passes inside, what a `Ledger` counts when planning them."""
    ledger = Ledger()

    def on_layer(index: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            ledger.layer(index, hidden.shape[0], hidden.shape[1])

        return hook

    def on_forward(module, args, kwargs):
        ledger.forwards += 1
        pixels = kwargs.get("pixel_values")
        if pixels is not None:
            ids = kwargs["input_ids"]
            ledger.images += int((ids == adapter.image_token_id).any(-1).sum())

    with ExitStack() as stack:
        for index, layer in enumerate(adapter.parts.layers):
            stack.callback(layer.register_forward_pre_hook(on_layer(index), with_kwargs=True).remove)
        stack.callback(adapter.model.register_forward_pre_hook(on_forward, with_kwargs=True).remove)
        yield ledger
