"""The Python API: the study's pieces one call at a time, for notebooks and scripts.

    import mllm_arb as ma

    model = ma.load("organism")                        # a shipped organism, a local folder, or an HF id in the cache
    items = ma.conflict_items(32)                      # the synthetic conflict task (or your own ConflictItems)
    batch = ma.conflict_batch(model, items, "vision_following")
    ma.log_odds(model, batch)                          # [B] log-odds of following the instructed source
    with ma.knock_out(model, batch, [("image", "instruction")], layers=[0, 1, 2]):
        ma.log_odds(model, batch)                      # ... with that attention edge blocked in those layers
    with ma.edit_heads(model, [(0, 3)], scale=0.0):    # zero a head (scale > 1 amplifies it)
        ma.log_odds(model, batch)
    ma.lens(model, batch)                              # [B, layers + 1] log-odds read from the residual stream

Every function here is a thin, documented front over the modules the commands use (the same hooks,
the same scoring), so a number computed in a notebook is the number a run would write. The commands
and their configuration: README.md; the method: docs/method.md; this API: docs/api.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .core.prompt import GROUPS, render_all
from .core.records import Condition, ConflictItem, Sample
from .core.scoring import answer_ids
from .interventions import heads as _heads
from .interventions import knockout as _knockout
from .interventions.lens import Contributions, capture_residuals, contributions_from_trace, stream_scores
from .models.adapter import ModelAdapter
from .models.loading import load_adapter
from .runtime.loading import checked
from .pipeline.heads.methods import Prepared, log_odds_under


def load(model: str | Path = "organism", device: str = "cpu", dtype: str = "float32", attn: str = "sdpa") -> ModelAdapter:
    """Load a model and its processor behind the family adapter every stage uses.

    `model` is "organism" (the natural organism shipped in the package), "organism_anchor" (the planted
    one, with its ground truth), a local folder, or a Hugging Face id already in the local cache (no
    download is attempted when `HF_HUB_OFFLINE=1`). A folder that is not a model, or damaged weights,
    raise `UserError` with one line."""
    return checked(load_adapter(str(model), device=device, dtype=dtype, attn_implementation=attn))


def conflict_items(n: int = 16, seed: int = 1000, **options) -> list[ConflictItem]:
    """`n` items of the synthetic conflict task (image, conflicting text context, both answers), the data
    the organisms were trained on; seeds from 1000 up are held out from training. `options` are
    `mllm_arb.data.synthetic.SyntheticConfig` fields (e.g. `families=["color"]`)."""
    from .data.synthetic import SyntheticConfig, generate_items

    return generate_items(SyntheticConfig(n_items=n, seed=seed, **options))


@dataclass(eq=False)
class ConflictBatch(Prepared):
    """A conflict batch, built once: the stages' prepared batch (model inputs with each row's token
    groups, the samples, each row's answer token ids) with the tokenizer that reads its groups back."""

    tokenizer: object = None

    def __len__(self) -> int:
        return len(self.batch)

    def group(self, name: str) -> torch.Tensor:
        """`[B, T]` True at the positions of token group `name` (one of `GROUPS`; empty in a row whose
        prompt lacks it) in each row."""
        if name not in GROUPS:
            raise ValueError(f"unknown token group {name!r}; the groups are {', '.join(GROUPS)}")
        return self.batch.group_mask(name)

    def group_text(self, name: str, row: int = 0) -> str:
        """The text of token group `name` in one row, decoded from its tokens (image tokens decode as
        the image placeholder)."""
        ids = self.batch.inputs["input_ids"][row][self.group(name)[row]]
        return self.tokenizer.decode(ids.tolist())


def conflict_batch(model: ModelAdapter, items: Sequence[ConflictItem] | Sequence[Sample], condition: str | Condition | None = None) -> ConflictBatch:
    """Render `items` under `condition` (text_following, vision_following, no_instruction, consistent,
    image_only, text_only) with the study's prompt templates and build one padded batch with its token
    groups and answer ids. Already rendered `Sample`s are taken as they are (no condition)."""
    if items and isinstance(items[0], Sample):
        if condition is not None:
            raise ValueError("samples are already rendered under a condition; pass items to render them under another")
        samples = list(items)
    else:
        if condition is None:
            raise ValueError("give the condition to render the items under, e.g. 'vision_following'")
        samples = render_all(items, [Condition(condition)])
    batch = model.build_batch(samples)
    return ConflictBatch(batch, [answer_ids(model.tokenizer, s) for s in batch.samples], model.tokenizer)


@torch.no_grad()
def log_odds(model: ModelAdapter, batch: ConflictBatch) -> torch.Tensor:
    """`[B]` log-odds of the following answer over the competitor at the last position (every surface
    variant of each answer counted): positive means the row follows the instructed source. Interventions
    active around the call (`knock_out`, `edit_heads`) apply."""
    return log_odds_under(model, batch)


def follows(model: ModelAdapter, batch: ConflictBatch) -> torch.Tensor:
    """`[B]` bool: the row follows the instructed source (log-odds > 0). Its mean is the MFR."""
    return log_odds(model, batch) > 0


@contextmanager
def knock_out(model: ModelAdapter, batch: ConflictBatch, edges: Sequence[tuple[str, str]], layers: Iterable[int]) -> Iterator[None]:
    """Within the block, block attention from each `(source, target)` token group to the other (rows of
    `target` cannot read columns of `source`) in `layers`, for this batch's rows; every head, through the
    attention interface (the knockout every analysis uses). Edges name `GROUPS`."""
    for src, dst in edges:
        for g in (src, dst):
            if g not in GROUPS:
                raise ValueError(f"unknown token group {g!r} in edge {src}->{dst}; the groups are {', '.join(GROUPS)}")
    with _knockout.knock_out(model, batch.batch, list(edges), list(layers)):
        yield


@contextmanager
def edit_heads(model: ModelAdapter, heads: Iterable[tuple[int, int]], scale: float = 0.0,
               positions: str | torch.Tensor | None = None, batch: ConflictBatch | None = None) -> Iterator[None]:
    """Within the block, scale the outputs of attention `heads` ((layer, head) pairs) by `scale`: 0
    blocks them, above 1 amplifies them. `positions`: None for every position, a group name ("last",
    "instruction", ... with `batch`), or a `[B, T]` bool mask."""
    if isinstance(positions, str):
        if batch is None:
            raise ValueError("positions by group name needs the batch")
        positions = batch.group(positions)
    with _heads.edit_heads(model, _heads.scale_heads(list(heads), scale), positions=positions):
        yield


@torch.no_grad()
def lens(model: ModelAdapter, batch: ConflictBatch, positions: str = "last") -> torch.Tensor:
    """Logit lens: `[B, layers + 1]` log-odds of following over the competitor read from the residual
    stream (final norm, then unembedding) before layer 0 and after each layer, at each row's last
    position (or the last token of another group, e.g. "instruction"). The last column equals
    `log_odds`."""
    trace = capture_residuals(model, batch.batch, positions if positions == "last" else _last_of(batch, positions))
    f, c = stream_scores(model, trace, [a.following for a in batch.ids], [a.competitor for a in batch.ids])
    # stream points: before layer 0, then after each component's write; keep the layer ends
    return (f - c)[:, 0, :: len(trace.sublayers)].cpu()


@torch.no_grad()
def contributions(model: ModelAdapter, batch: ConflictBatch) -> Contributions:
    """Each layer's attention and MLP write, read through the lens at the last position: how much it
    moves the following answer's score over the competitor's (`.difference`: `[B, 1, layers, k]`,
    attention, MLP, then a between-layer writer where the family has one: `.sublayers`). They sum, with
    the stream's start, to the final log-odds."""
    trace = capture_residuals(model, batch.batch, "last")
    return contributions_from_trace(model, trace, [a.following for a in batch.ids], [a.competitor for a in batch.ids])


def _last_of(batch: ConflictBatch, group: str) -> list[list[int]]:
    mask = batch.group(group)
    if not mask.any(1).all():
        raise ValueError(f"some rows have no {group!r} tokens (a control without it?)")
    return [[int(row.nonzero().max())] for row in mask]


__all__ = ["GROUPS", "ConflictBatch", "conflict_batch", "conflict_items", "contributions", "edit_heads", "follows", "knock_out",
           "lens", "load", "log_odds"]
