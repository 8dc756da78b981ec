"""Scoring a sample (docs/method.md §3): binary-constrained following probability at the last position,
and optional greedy generation classified as following / competitor / other."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

from .errors import UserError
from .records import Sample


@dataclass(frozen=True)
class AnswerIds:
    """De-duplicated first-token ids of the surface variants of both answers of one sample."""

    following: tuple[int, ...]
    competitor: tuple[int, ...]


@dataclass(frozen=True)
class ScoredSample:
    item_id: str
    task: str
    condition: str
    following: str
    competitor: str
    p_follow: float
    log_odds: float  # log P(following) - log P(competitor), the continuous metric
    p_mass: float  # P(following) + P(competitor): how much of the next-token mass the two answers hold
    follows: bool
    generated: str | None = None
    generated_class: str | None = None  # following / competitor / other

    def to_row(self) -> dict:
        return asdict(self)


def surface_variants(answer: str, synonyms: Iterable[str] = ()) -> list[str]:
    """The answer word with casing and leading-space variants, plus listed synonyms."""
    out: list[str] = []
    for word in (answer, *synonyms):
        word = word.strip()
        for form in {word, word.lower(), word.capitalize(), word.upper()}:
            out += [form, " " + form]
    return list(dict.fromkeys(out))


def first_token_ids(tokenizer, variants: Iterable[str]) -> set[int]:
    ids = set()
    unknown = getattr(tokenizer, "unk_token_id", None)
    for v in variants:
        toks = tokenizer(v, add_special_tokens=False)["input_ids"]
        if toks:
            first = toks[0]
            if unknown is not None and first == unknown:  # a word outside the vocabulary is no answer at all
                continue
            # a bare space or marker is the start of many words and would say nothing about this one
            if tokenizer.decode([first]).strip():
                ids.add(int(first))
    return ids


def answer_ids(tokenizer, sample: Sample) -> AnswerIds:
    fol = first_token_ids(tokenizer, surface_variants(sample.following, sample.following_variants))
    com = first_token_ids(tokenizer, surface_variants(sample.competitor, sample.competitor_variants))
    shared = fol & com  # e.g. "blue" and "black" both starting with "bl": such tokens decide nothing
    fol, com = fol - shared, com - shared
    for answer, ids in ((sample.following, fol), (sample.competitor, com)):
        if not ids:
            raise UserError(
                f"sample {sample.item_id}: answer {answer!r} has no first token that tells it apart from the other answer"
            )
    return AnswerIds(tuple(sorted(fol)), tuple(sorted(com)))


def binary_scores(logits: torch.Tensor, ids: Sequence[AnswerIds]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From [B, V] logits: log-odds of following vs competitor, p_follow, and the mass the two hold."""
    if logits.stride(-1) == 0:  # one value per row repeated over the vocabulary (`mllm-arb plan`'s stand-in): uniform
        logp = (logits[..., :1].float() * 0 - math.log(logits.shape[-1])).expand(logits.shape)
    else:
        logp = torch.log_softmax(logits.float(), dim=-1)
    lf = _logsumexp_at(logp, [a.following for a in ids])
    lc = _logsumexp_at(logp, [a.competitor for a in ids])
    log_odds = lf - lc
    return log_odds, torch.sigmoid(log_odds), torch.exp(torch.logaddexp(lf, lc))


def _logsumexp_at(logp: torch.Tensor, columns: Sequence[Sequence[int]]) -> torch.Tensor:
    """`[B]` logsumexp of row i's entries at `columns[i]`: one gather per number of columns, so that every
    row is reduced over exactly its own entries (padding would change the order of the sums)."""
    out = logp.new_empty(len(columns))
    by_width: dict[int, list[int]] = {}
    for i, c in enumerate(columns):
        by_width.setdefault(len(c), []).append(i)
    for rows in by_width.values():
        index = torch.tensor([list(columns[i]) for i in rows], device=logp.device)
        at = torch.tensor(rows, device=logp.device)
        out[at] = torch.logsumexp(logp[at[:, None], index], 1)
    return out


_WORD = re.compile(r"[a-z0-9]+")


def classify_generation(text: str, sample: Sample) -> str:
    words = _WORD.findall(text.lower())
    if not words:
        return "other"
    for label, answer, syns in (
        ("following", sample.following, sample.following_variants),
        ("competitor", sample.competitor, sample.competitor_variants),
    ):
        forms = {" ".join(_WORD.findall(a.lower())) for a in (answer, *syns)}
        if any(" ".join(words[: len(f.split())]) == f for f in forms if f):
            return label
    return "other"


def batches(samples: Sequence[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Consecutive batches that never mix conditions (a batch shares image presence and layout)."""
    by_condition: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_condition[s.condition.value].append(s)
    for group in by_condition.values():
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


def check_answers(tokenizer, samples: Sequence[Sample]) -> None:
    """Fail before any work starts if some answer cannot be scored (raises UserError)."""
    for s in samples:
        answer_ids(tokenizer, s)
