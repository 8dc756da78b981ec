"""Running a model over samples and scoring each answer (docs/method.md §3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core.records import Sample
from ..core.scoring import ScoredSample, answer_ids, batches, binary_scores, classify_generation
from .adapter import Batch, ModelAdapter


@torch.no_grad()
def generate(adapter: ModelAdapter, batch: Batch, max_new_tokens: int) -> list[str]:
    # generation counts positions from the mask itself, and extends them token by token
    inputs = {k: v for k, v in batch.inputs.items() if k != "position_ids"}
    out = adapter.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, batch.inputs["input_ids"].shape[1] :]
    return adapter.tokenizer.batch_decode(new, skip_special_tokens=True)


def score_batch(adapter: ModelAdapter, batch: Batch, logits: torch.Tensor, generated: list[str] | None = None) -> list[ScoredSample]:
    ids = [answer_ids(adapter.tokenizer, s) for s in batch.samples]
    log_odds, p_follow, mass = binary_scores(logits, ids)
    rows = []
    for i, s in enumerate(batch.samples):
        text = generated[i] if generated is not None else None
        rows.append(
            ScoredSample(
                item_id=s.item_id,
                task=s.task,
                condition=s.condition.value,
                following=s.following,
                competitor=s.competitor,
                p_follow=float(p_follow[i]),
                log_odds=float(log_odds[i]),
                p_mass=float(mass[i]),
                follows=bool(p_follow[i] > 0.5),
                generated=text,
                generated_class=classify_generation(text, s) if text is not None else None,
            )
        )
    return rows


def score_samples(
    adapter: ModelAdapter,
    samples: Sequence[Sample],
    batch_size: int = 8,
    generate_tokens: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[ScoredSample]:
    rows: list[ScoredSample] = []
    for chunk in batches(samples, batch_size):
        batch = adapter.build_batch(chunk)
        logits = adapter.last_logits(batch)
        gen = generate(adapter, batch, generate_tokens) if generate_tokens > 0 else None
        rows += score_batch(adapter, batch, logits, gen)
        if on_batch:
            on_batch(len(chunk))
    return rows
