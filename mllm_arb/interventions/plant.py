"""The planted route as attention masks: which (query, key) entries each head of each layer must leave
alone on an instructed prompt (`route_blocks`), the attention mass a model puts on them
(`forbidden_mass`, the training penalty and the plant's check), and the route enforced as a per-head
knockout (`restrict_to_route`, the same knockout every analysis uses, with a heads dimension).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from ..core.ground_truth import AFTER_INSTRUCTION, SOURCES, GroundTruth
from ..models.adapter import Batch
from .attention_interface import wrap_text_attention
from .knockout import _Knockout, knock_out_rows


def _pairs(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`[B, T, T]`: query rows `rows` reading key columns `cols`."""
    return rows[:, :, None] & cols[:, None, :]


def route_blocks(batch: Batch, truth: GroundTruth) -> dict[int, torch.Tensor]:
    """Per decoder layer, `[B, H, T, T]` True where head h's query t may not read key s on the route
    (instructed rows only; rows without an instruction block nothing; a position always reads itself)."""
    g = {name: batch.group_mask(name) for name in (*SOURCES, "instruction", "last", *AFTER_INSTRUCTION)}
    instructed = g["instruction"].any(1)[:, None]
    after = torch.zeros_like(g["last"])
    for name in AFTER_INSTRUCTION:
        after |= g[name]
    after &= ~g["last"]
    sources = g["image"] | g["context"]
    always = _pairs(g["context"], g["image"]) | _pairs(after, sources | g["instruction"]) | _pairs(g["last"], sources)
    transfer = _pairs(g["instruction"], sources)
    arbitration = _pairs(g["last"], g["instruction"])
    relay = _pairs(g["instruction"], g["instruction"])
    relayed = set(truth.relay_heads) | set(truth.transfer_heads)
    n_rows, n_tok = g["last"].shape
    keep = ~torch.eye(n_tok, dtype=torch.bool, device=always.device)
    instructed = instructed[:, :, None]
    blocks = {}
    for layer in range(truth.n_layers):
        block = always[:, None].repeat(1, truth.n_heads, 1, 1)
        shallow = layer in truth.shallow
        for head in range(truth.n_heads):
            if not (shallow and (layer, head) in truth.transfer_heads):
                block[:, head] |= transfer
            if shallow or (layer, head) not in truth.arbitration_heads:
                block[:, head] |= arbitration
            if layer in truth.relay_layers and (layer, head) not in relayed:
                block[:, head] |= relay
        blocks[layer] = block & keep & instructed[:, None]
    return blocks


def instruction_end(batch: Batch) -> torch.Tensor:
    """`[B, T]` True at the last instruction token of each instructed row (the anchor)."""
    inst = batch.group_mask("instruction")
    n_tok = inst.shape[1]
    last = torch.where(inst, torch.arange(n_tok, device=inst.device), -1).max(1).values
    return (torch.arange(n_tok, device=inst.device)[None] == last[:, None]) & inst.any(1)[:, None]


def route_targets(batch: Batch, truth: GroundTruth, anchor: bool = False) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer with planted heads, `(rows [B, H, T], keys [B, H, T, T])`: the query rows each planted
    head serves on an instructed row (instruction positions for a transfer head, the last position for
    an arbitration head) and the keys its edge opens (image and context; the instruction). With
    `anchor`, both ends narrow to the instruction's last token: a transfer head serves that row, an
    arbitration head reads that key (where the anchor loss puts the answer)."""
    g = {name: batch.group_mask(name) for name in (*SOURCES, "instruction", "last")}
    instructed = g["instruction"].any(1)[:, None]
    served = instruction_end(batch) if anchor else g["instruction"]
    n_rows, n_tok = g["last"].shape
    out = {}
    for layer in range(truth.n_layers):
        rows = torch.zeros(n_rows, truth.n_heads, n_tok, dtype=torch.bool, device=g["last"].device)
        keys = torch.zeros(n_rows, truth.n_heads, n_tok, n_tok, dtype=torch.bool, device=g["last"].device)
        for head in range(truth.n_heads):
            if (layer, head) in truth.transfer_heads:
                rows[:, head] = served & instructed
                keys[:, head] = _pairs(served, g["image"] | g["context"])
            elif (layer, head) in truth.arbitration_heads:
                rows[:, head] = g["last"] & instructed
                keys[:, head] = _pairs(g["last"], served)
        if rows.any():
            out[layer] = (rows, keys)
    return out


@contextmanager
def restrict_to_route(adapter, batch: Batch, truth: GroundTruth) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, every head reads only what the route allows (per-head knockouts, one per layer)."""
    blocks = route_blocks(batch, truth)
    with restrict_blocks(adapter, blocks):
        yield blocks


@contextmanager
def restrict_blocks(adapter, blocks: dict[int, torch.Tensor]) -> Iterator[None]:
    """`route_blocks`' masks as knockouts, each in its own layer."""
    n_rows = next(iter(blocks.values())).shape[0]
    with ExitStack() as stack:
        for layer, block in sorted(blocks.items()):
            stack.enter_context(knock_out_rows(adapter, block, [{layer}] * n_rows))
        yield


class MassRecord:
    """Per layer, the attention mass each (row, head, query) puts on its blocked keys (with autograd),
    and, with route targets, the mass each planted head's served rows put on the keys its edge opens."""

    def __init__(self, blocks: dict[int, torch.Tensor], targets: dict | None = None,
                 queries: dict[str, torch.Tensor] | None = None) -> None:
        self.blocks = blocks
        self.targets = targets or {}
        self.queries = queries or {}
        self.mass: dict[int, torch.Tensor] = {}
        self.counted: dict[int, torch.Tensor] = {}
        self.target_mass: dict[int, torch.Tensor] = {}

    def route_loss(self) -> torch.Tensor:
        """Mean -log of the mass planted heads put on their open edges, over the rows they serve."""
        terms = [-(m[self.targets[l][0]] + 1e-6).log() for l, m in self.target_mass.items()]
        return torch.cat(terms).mean() if terms else torch.zeros(())

    def penalty(self) -> torch.Tensor:
        """Mean blocked mass over the (row, head, query) triples that have a blocked key; with query
        groups (`[B, T]` masks), the mean of each group's mean, so that a group of few positions (the
        last one) weighs as much as a group of many (question and format)."""
        if not self.queries:
            return self._mean(None)
        return torch.stack([self._mean(group) for group in self.queries.values()]).mean()

    def _mean(self, group: torch.Tensor | None) -> torch.Tensor:
        total, count = torch.zeros(()), 0
        for layer, m in self.mass.items():
            counted = self.counted[layer]
            if group is not None:  # the group's masks may stop before positions appended after the prompt
                counted = counted & torch.nn.functional.pad(group, (0, m.shape[-1] - group.shape[-1]))[:, None]
            total = total + (m * counted).sum()
            count += int(counted.sum())
        return total / max(1, count)

    def max(self) -> float:
        return max((float(m.detach().max()) for m in self.mass.values()), default=0.0)


@contextmanager
def forbidden_mass(model, blocks: dict[int, torch.Tensor], targets: dict | None = None,
                   queries: dict[str, torch.Tensor] | None = None) -> Iterator[MassRecord]:
    """Within the block, every forward pass records `MassRecord`: the softmax mass the model's own
    attention (its own mask, unchanged) puts on the entries `blocks` marks, recomputed from the query
    and key the attention call receives. The forward itself is untouched."""
    record = MassRecord(blocks, targets, queries)

    def attention(base, module, query, key, value, attention_mask, *args, **kwargs):
        layer = getattr(module, "layer_idx", None)
        if layer in blocks or layer in record.targets:
            n_q, n_k = query.shape[2], key.shape[2]
            blocked = _Knockout._blocked(blocks[layer], n_q, n_k, query.device)
            groups = query.shape[1] // key.shape[1]
            k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
            scores = (query.float() @ k.float().transpose(-1, -2)) * module.scaling
            # a finite floor, not -inf: a padding row that may read nothing must not turn into NaN
            floor = torch.finfo(torch.float32).min
            if attention_mask is None:
                allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device).tril(n_k - n_q)
                scores = scores.masked_fill(~allowed, floor)
            elif attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask[..., :n_k], floor)
            else:
                scores = (scores + attention_mask[..., :n_k].float()).clamp_min(floor)
            probs = scores.softmax(-1)
            record.mass[layer] = (probs * blocked).sum(-1)
            record.counted[layer] = blocked.any(-1)
            if layer in record.targets:
                keys = _Knockout._blocked(record.targets[layer][1], n_q, n_k, query.device)
                record.target_mass[layer] = (probs * keys).sum(-1)
        return base(module, query, key, value, attention_mask, *args, **kwargs)

    with wrap_text_attention(model, attention, "the planted route's attention mass"):
        yield record
