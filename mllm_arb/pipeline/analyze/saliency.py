"""Attention-saliency flow (docs/method.md §4, opt-in): how much each group pair's attention matters to the
decision, per layer, as `|A ⊙ ∂L/∂A|` summed over heads, with L the following log-odds at the last
position. One forward and one backward pass per batch, on eager attention (switched on for the pass).

A pair `src->dst` is the mean saliency over the (row in dst, column in src) entries a row may attend to,
so groups of different sizes compare; the same edge names as the knockout.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from ...core.records import Sample
from ...core.scoring import answer_ids, binary_scores
from ...core.scoring import batches
from ...core.stats import summarise
from ...interventions.attention_weights import record_attention_weights
from ...models.adapter import ModelAdapter
from .flow import edge_name


def saliency_maps(adapter: ModelAdapter, batch, ids) -> torch.Tensor:
    """`[L, B, T, T]` saliency `|A ⊙ ∂L/∂A|` summed over heads, each row's gradient its own; NaN in a layer
    without attention weights (linear attention: Qwen3.5), which then gives no rows."""
    n_layers, layers = adapter.parts.n_layers, adapter.parts.head_layers
    with torch.enable_grad(), record_attention_weights(adapter) as weights:
        logits = adapter.model(**batch.inputs, use_cache=False).logits
        rows = torch.arange(len(batch), device=logits.device)
        last = logits[rows, torch.tensor(batch.last, device=logits.device)].float()
        log_odds = binary_scores(last, ids)[0]
        missing = [l for l in layers if l not in weights]
        if missing:
            raise RuntimeError(f"no attention weights recorded for layers {missing}")
        attn = [weights[l] for l in layers]
        # rows never mix in a forward pass, so the gradient of the sum is each row's own gradient
        grads = torch.autograd.grad(log_odds.sum(), attn)
    maps = torch.stack([(a.detach() * g).abs().sum(1).float() for a, g in zip(attn, grads)])
    if len(layers) == n_layers:
        return maps
    out = maps.new_full((n_layers, *maps.shape[1:]), float("nan"))
    out[list(layers)] = maps
    return out


def pair_saliency(maps: torch.Tensor, batch, edge: tuple[str, str]) -> torch.Tensor:
    """`[L, B]` mean saliency over the causal (dst row, src column) entries of each row; NaN when empty."""
    src, dst = batch.group_mask(edge[0]).to(maps.device), batch.group_mask(edge[1]).to(maps.device)
    n = maps.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=maps.device).tril()
    pairs = (dst[:, :, None] & src[:, None, :] & causal).float()  # [B, T, T]
    count = pairs.sum((1, 2))
    total = (maps * pairs).sum((2, 3))
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def saliency_rows(
    adapter: ModelAdapter,
    samples: Sequence[Sample],
    edges: Sequence[tuple[str, str]],
    batch_size: int,
    on_step: Callable[[int], None] | None = None,
) -> list[dict]:
    """Per sample, edge and layer: the mean attention saliency of that group pair."""
    rows: list[dict] = []
    for chunk in batches(samples, batch_size):
        batch = adapter.build_batch(chunk)
        maps = saliency_maps(adapter, batch, [answer_ids(adapter.tokenizer, s) for s in chunk])
        for edge in edges:
            per_layer = pair_saliency(maps, batch, edge).cpu()
            for i, s in enumerate(chunk):
                for layer in range(per_layer.shape[0]):
                    value = float(per_layer[layer, i])
                    if value == value:  # a pair with no entries (e.g. no image) gives no row
                        rows.append({"item_id": s.item_id, "task": s.task, "setting": s.condition.value,
                                     "edge": edge_name(edge), "layer": layer, "saliency": value})
        if on_step:
            on_step(len(chunk))
    return rows


def summarise_saliency(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, list[dict]]]:
    """{setting: {edge: [per layer: mean saliency with its 95% interval]}}."""
    grouped: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        grouped[(r["setting"], r["edge"], r["layer"])].append(r["saliency"])
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for (setting, edge, layer), values in sorted(grouped.items(), key=lambda kv: kv[0][2]):
        s = summarise(values, n_boot=n_boot, seed=seed)
        out[setting][edge].append({"layer": layer, "mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n": s["n"]})
    return {k: dict(v) for k, v in out.items()}
