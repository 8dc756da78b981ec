"""Logit lens by component: the residual stream at chosen positions, layer by layer and sublayer by
sublayer, read through the final norm and the unembedding.

One forward pass with hooks records, at the chosen positions, the residual before each layer and the
writes of its attention and MLP sublayers (the adapter's `attn_writer`/`mlp_writer`: Gemma 3's sandwich
norms write through their post-norms, not through `self_attn`/`mlp`), what the layer writes after its
MLP (Gemma 4's per-layer input, `late_writers`) and what its scaling changes (Gemma 4's `layer_scalar`:
(scale - 1) times the layer's sum), what the model writes between layers besides them (Qwen3-VL's
DeepStack, `interventions/gaps.py`), each its own component, plus the residual entering the final norm.
The residual after a component is rebuilt as `before + write`, the addition the layer itself performs,
so nothing of the model's forward is re-implemented.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from ..models.adapter import LAYER_SCALE, Batch
from .gaps import record_gaps

SUBLAYERS = ("attn", "mlp")


@dataclass
class ResidualTrace:
    """Residual-stream snapshots at `positions` (`[B, P]`; entries with `valid` False are padding).

    `pre`, `attn`, `mlp`: `[L, B, P, d]`: the residual entering layer l, and what its attention and MLP
    sublayers add to it. `final`: `[B, P, d]` the residual entering the final norm. `logits`: `[B, P, V]`
    the model's own output logits there (what the lens at the final residual must reproduce). `late`:
    `{name: [L, B, P, d]}` what layer l writes after its MLP, in order (Gemma 4's per-layer input, then
    its layer scale; empty for most families). `gap`: `[L, B, P, d]` what the model writes after layer l
    besides its layers (named `gap_name`; None for families without such a writer), so that
    `out[l] + gap[l]` is the input of layer l + 1.
    """

    positions: torch.Tensor
    valid: torch.Tensor
    pre: torch.Tensor
    attn: torch.Tensor
    mlp: torch.Tensor
    final: torch.Tensor
    logits: torch.Tensor
    gap: torch.Tensor | None = None
    gap_name: str = ""
    late: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def sublayers(self) -> tuple[str, ...]:
        """The components each layer has, in the order they write: attention, MLP, the writes after the
        MLP, then a between-layer writer."""
        return SUBLAYERS + tuple(self.late) + ((self.gap_name,) if self.gap is not None else ())

    @property
    def n_layers(self) -> int:
        return self.pre.shape[0]

    @property
    def mid(self) -> torch.Tensor:
        """`[L, B, P, d]` residual after layer l's attention write."""
        return self.pre + self.attn

    @property
    def post(self) -> torch.Tensor:
        """`[L, B, P, d]` residual after layer l's MLP write."""
        return self.mid + self.mlp

    @property
    def out(self) -> torch.Tensor:
        """`[L, B, P, d]` layer l's output: the residual after its MLP and every write after it."""
        return self.post + sum(self.late.values()) if self.late else self.post

    def stream(self) -> torch.Tensor:
        """`[kL + 1, B, P, d]` (k: `len(sublayers)`): the residual before layer 0, then after each
        component in order."""
        mid, post = self.mid, self.post
        points = [self.pre[0]]
        for layer in range(self.n_layers):
            points += [mid[layer], post[layer]]
            for write in self.late.values():
                points.append(points[-1] + write[layer])
            if self.gap is not None:
                points.append(points[-1] + self.gap[layer])
        return torch.stack(points)


def resolve_positions(batch: Batch, positions: str | torch.Tensor | Sequence[Sequence[int]] = "last") -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, P]` positions and validity from a group name (`"last"`, `"instruction"`, ...), a `[B, T]`
    bool mask, or per-row position lists. Rows with fewer positions are padded with their last entry."""
    if isinstance(positions, str):
        rows = [list(spans.get(positions, [])) for spans in batch.spans]
    elif isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        rows = [r.nonzero().flatten().tolist() for r in positions]
    else:
        rows = [[int(p) for p in r] for r in positions]
    if len(rows) != len(batch):
        raise ValueError(f"positions name {len(rows)} rows but the batch has {len(batch)}")
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise ValueError(f"rows {empty} have no positions to read ({positions if isinstance(positions, str) else 'given'})")
    width = max(len(r) for r in rows)
    pos = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows], dtype=torch.long)
    valid = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    device = batch.inputs["input_ids"].device
    return pos.to(device), valid.to(device)


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _written(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # attention modules return (output, weights)


@contextmanager
def record_residuals(adapter, positions: torch.Tensor) -> Iterator[dict]:
    """Record, during the forward passes inside, the residual pieces at `positions` (`[B, P]`).

    Yields a dict filled with `pre`/`attn`/`mlp` (lists of `[B, P, d]` per layer), `final`, `late` (the
    names of the writes after the MLP, each a list like `mlp`'s under its name) and `gaps` (the
    between-layer writes, `interventions/gaps.py`).
    """
    parts = adapter.parts
    n_layers = parts.n_layers
    late = [name for _, name in adapter.late]
    record: dict = {"pre": [None] * n_layers, "attn": [None] * n_layers, "mlp": [None] * n_layers, "final": None,
                    "late": late, **{name: [None] * n_layers for name in late}}

    def take(hidden: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        return hidden[rows, positions.to(hidden.device)].detach()

    def pre_hook(layer):
        def hook(module, args, kwargs):
            record["pre"][layer] = take(_hidden(args, kwargs))

        return hook

    def write_hook(kind, layer):
        def hook(module, args, output):
            written = _written(output)
            if args and written.dim() == 2 and args[0].dim() == 3:  # Llama 4's MoE returns its rows flattened
                written = written.reshape(args[0].shape)
            record[kind][layer] = take(written)

        return hook

    def final_hook(module, args, kwargs):
        record["final"] = take(_hidden(args, kwargs))

    with ExitStack() as stack:
        for layer in range(n_layers):
            handles = (
                parts.layers[layer].register_forward_pre_hook(pre_hook(layer), with_kwargs=True),
                adapter.attn_writer(layer).register_forward_hook(write_hook("attn", layer)),
                adapter.mlp_writer(layer).register_forward_hook(write_hook("mlp", layer)),
            )
            for module, name in adapter.late:
                handles += (getattr(parts.layers[layer], module).register_forward_hook(write_hook(name, layer)),)
            for handle in handles:
                stack.callback(handle.remove)
        handle = parts.final_norm.register_forward_pre_hook(final_hook, with_kwargs=True)
        stack.callback(handle.remove)
        record["gaps"] = stack.enter_context(record_gaps(adapter))
        yield record


@torch.no_grad()
def capture_residuals(adapter, batch: Batch, positions: str | torch.Tensor | Sequence[Sequence[int]] = "last") -> ResidualTrace:
    """Run `batch` once and return the residual stream at `positions` (default: each row's last)."""
    pos, valid = resolve_positions(batch, positions)
    with record_residuals(adapter, pos) as record:
        out = adapter.model(**batch.inputs, use_cache=False)
    late_names = record["late"]
    missing = [k for k in ("pre", "attn", "mlp", *late_names) if any(t is None for t in record[k])]
    missing += ["final"] if record["final"] is None else []
    if missing:
        raise RuntimeError(f"the forward pass never reached the hooks for {missing}")
    rows = torch.arange(len(batch), device=out.logits.device)[:, None]
    gaps, pre = record["gaps"], record["pre"][0]
    gap = torch.stack([gaps.written(layer, pos, pre) for layer in range(len(record["pre"]))]) if gaps.method else None
    trace = ResidualTrace(
        gap=gap,
        gap_name=gaps.name,
        positions=pos,
        valid=valid,
        pre=torch.stack(record["pre"]),
        attn=torch.stack(record["attn"]),
        mlp=torch.stack(record["mlp"]),
        final=record["final"],
        logits=out.logits[rows, pos.to(out.logits.device)],
        late={name: torch.stack(record[name]) for name in late_names},
    )
    if adapter.layer_scale:
        # the layer multiplies its sum by the scale: what that adds is (scale - 1) times the sum
        scale = torch.stack([getattr(layer, adapter.layer_scale).reshape(()) for layer in adapter.parts.layers])
        trace.late[LAYER_SCALE] = (scale.to(trace.pre.dtype) - 1).view(-1, 1, 1, 1) * trace.out
    return trace


def lens_logits(adapter, resid: torch.Tensor) -> torch.Tensor:
    """Read residual vectors (`[..., d]`) as next-token logits: unembed(final_norm(resid)), soft-capped
    where the model caps its own logits."""
    return adapter.parts.read(resid)


def _id_lists(ids, n_rows: int) -> list[list[int]]:
    rows = [[int(i)] if isinstance(i, int) or (isinstance(i, torch.Tensor) and i.ndim == 0) else [int(j) for j in i] for i in ids]
    if len(rows) != n_rows or any(not r for r in rows):
        raise ValueError(f"need a non-empty token-id set for each of the {n_rows} rows")
    return rows


def _set_score(logits: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
    """`[B, P]` score of each row's token set: logsumexp of their logits (the logit itself for one id).

    logsumexp is the log of the summed unnormalised probability, so following-minus-competitor scores
    are the log-odds of the binary-constrained score (docs/method.md §3) under the lens.
    """
    out = []
    for row, row_ids in enumerate(ids):
        out.append(torch.logsumexp(logits[row][..., row_ids].float(), dim=-1))
    return torch.stack(out)


@torch.no_grad()
def stream_scores(adapter, trace: ResidualTrace, following_ids, competitor_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Lens scores of the following and competitor token sets at every point of the stream:
    two `[B, P, kL + 1]` tensors (before layer 0, then after each component's write; `trace.sublayers`)."""
    n_rows = trace.pre.shape[1]
    fol, com = _id_lists(following_ids, n_rows), _id_lists(competitor_ids, n_rows)
    stream = trace.stream()
    f_scores, c_scores = [], []
    for point in stream:  # one point at a time: full-vocabulary logits of every point at once can be large
        logits = lens_logits(adapter, point)
        f_scores.append(_set_score(logits, fol))
        c_scores.append(_set_score(logits, com))
    return torch.stack(f_scores, -1), torch.stack(c_scores, -1)


@dataclass
class Contributions:
    """Per layer and sublayer, the change a sublayer makes to the lens scores (lens after minus lens
    before it), at each row's positions.

    `following`, `competitor`: `[B, P, L, k]` (last axis: `sublayers`: attn, mlp, and a between-layer
    writer where the family has one, e.g. "deepstack"). `start_*`: `[B, P]`
    lens score of the embeddings (before layer 0); `final_*`: `[B, P]` at the final residual, which
    equals the start plus every contribution. Scores are logsumexp over each row's token-id set.
    """

    following: torch.Tensor
    competitor: torch.Tensor
    start_following: torch.Tensor
    start_competitor: torch.Tensor
    final_following: torch.Tensor
    final_competitor: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    sublayers: tuple[str, ...] = SUBLAYERS

    @property
    def difference(self) -> torch.Tensor:
        """`[B, P, L, k]` contribution to following minus competitor (to the lens log-odds)."""
        return self.following - self.competitor

    def of(self, sublayer: str) -> dict[str, torch.Tensor]:
        """`{following, competitor, difference}` as `[B, P, L]` for one component ("attn", "mlp", ...)."""
        k = self.sublayers.index(sublayer)
        return {"following": self.following[..., k], "competitor": self.competitor[..., k], "difference": self.difference[..., k]}


def contributions_from_trace(adapter, trace: ResidualTrace, following_ids, competitor_ids) -> Contributions:
    f, c = stream_scores(adapter, trace, following_ids, competitor_ids)
    n_layers = trace.n_layers

    def per_sublayer(scores: torch.Tensor) -> torch.Tensor:
        return scores.diff(dim=-1).reshape(*scores.shape[:-1], n_layers, len(trace.sublayers))

    return Contributions(
        following=per_sublayer(f),
        competitor=per_sublayer(c),
        start_following=f[..., 0],
        start_competitor=c[..., 0],
        final_following=f[..., -1],
        final_competitor=c[..., -1],
        positions=trace.positions,
        valid=trace.valid,
        sublayers=trace.sublayers,
    )


def component_contributions(
    adapter,
    batch: Batch,
    token_ids_following,
    token_ids_competitor,
    positions: str | torch.Tensor | Sequence[Sequence[int]] = "last",
) -> Contributions:
    """One forward pass: each attention and MLP sublayer's change to the lens scores of the following
    and competitor answers. Token ids per row: one id, or a set of ids (e.g. `AnswerIds.following`)."""
    if adapter.ledger is not None:  # planning: one forward pass counted, zero contributions
        adapter.ledger.forward(adapter, batch)
        pos, valid = resolve_positions(batch, positions)
        sublayers = adapter.components()
        zeros = torch.zeros(*pos.shape, adapter.parts.n_layers, len(sublayers))
        flat = torch.zeros(pos.shape)
        return Contributions(zeros, zeros, flat, flat, flat, flat, pos, valid, sublayers)
    trace = capture_residuals(adapter, batch, positions)
    return contributions_from_trace(adapter, trace, token_ids_following, token_ids_competitor)
