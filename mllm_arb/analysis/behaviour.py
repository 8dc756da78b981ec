"""Behaviour: score every sample and report the modality-following ratio per condition (§3)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import torch

from ..data.records import Sample
from ..models.adapter import Batch, ModelAdapter
from ..scoring import ScoredSample, answer_ids, binary_scores, classify_generation
from .stats import summarise


def batches(samples: Sequence[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Consecutive batches that never mix conditions (a batch shares image presence and layout)."""
    by_condition: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_condition[s.condition.value].append(s)
    for group in by_condition.values():
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


@torch.no_grad()
def generate(adapter: ModelAdapter, batch: Batch, max_new_tokens: int) -> list[str]:
    out = adapter.model.generate(**batch.inputs, max_new_tokens=max_new_tokens, do_sample=False)
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


def check_answers(tokenizer, samples: Sequence[Sample]) -> None:
    """Fail before any work starts if some answer cannot be scored (raises UserError)."""
    for s in samples:
        answer_ids(tokenizer, s)


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


def mfr_table(rows: Sequence[ScoredSample], n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """MFR (share following) with a bootstrap interval, mean log-odds, and generation split, per condition
    and per condition × task."""
    groups: dict[str, list[ScoredSample]] = defaultdict(list)
    for r in rows:
        groups[r.condition].append(r)
        groups[f"{r.condition}/{r.task}"].append(r)
    table = {}
    for key, rs in sorted(groups.items()):
        entry = {"mfr": summarise([float(r.follows) for r in rs], n_boot=n_boot, seed=seed)}
        entry["log_odds"] = summarise([r.log_odds for r in rs], n_boot=n_boot, seed=seed)
        if rs[0].generated_class is not None:
            entry["generation"] = {c: sum(r.generated_class == c for r in rs) / len(rs) for c in ("following", "competitor", "other")}
        table[key] = entry
    return table
