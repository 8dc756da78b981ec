"""Held-out behaviour of an organism: binary-constrained following per condition and attribute family.

Scoring is the toolkit's own (`mllm_arb.scoring`): at the last prompt position, p_follow =
P(following) / (P(following) + P(competitor)) over the first tokens of the answers' surface variants;
a sample follows when p_follow > 0.5. For the controls (consistent, image only, text only) the
following answer is the correct one, so the rate reads as accuracy; under no instruction it is the
share that follows the text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from ..core.prompt import render
from ..core.records import Condition, ConflictItem
from ..core.scoring import answer_ids, binary_scores
from .batching import encode

ALL_CONDITIONS: tuple[Condition, ...] = tuple(Condition)


@torch.no_grad()
def score(model, processor, samples: Sequence, batch_size: int = 64) -> list[dict]:
    """One row per sample: item, family, condition, p_follow, log-odds, follows."""
    model.eval()
    rows: list[dict] = []
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start : start + batch_size])
        inputs = encode(processor, chunk)
        logits = model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        ids = [answer_ids(processor.tokenizer, s) for s in chunk]
        log_odds, p, _ = binary_scores(logits, ids)
        for s, lo, pf in zip(chunk, log_odds.tolist(), p.tolist()):
            rows.append(
                {
                    "item_id": s.item_id,
                    "task": s.task,
                    "condition": s.condition.value,
                    "following": s.following,
                    "competitor": s.competitor,
                    "p_follow": pf,
                    "log_odds": lo,
                    "follows": pf > 0.5,
                }
            )
    return rows


def evaluate(
    model,
    processor,
    items: Sequence[ConflictItem],
    conditions: Sequence[Condition | str] = ALL_CONDITIONS,
    batch_size: int = 64,
) -> dict:
    """Render every item under every condition with the study's sentences, score, and summarise."""
    samples = [render(it, Condition(c)) for c in conditions for it in items]
    return summarize(score(model, processor, samples, batch_size=batch_size))


def summarize(rows: Sequence[dict]) -> dict:
    """{condition: {n, rate, mean_p_follow, per_family: {family: rate}, n_per_family}}."""
    by_cond: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_cond[r["condition"]].append(r)
    out = {}
    for cond, rs in by_cond.items():
        fam: dict[str, list[bool]] = defaultdict(list)
        for r in rs:
            fam[r["task"]].append(r["follows"])
        out[cond] = {
            "n": len(rs),
            "rate": sum(r["follows"] for r in rs) / len(rs),
            "mean_p_follow": sum(r["p_follow"] for r in rs) / len(rs),
            "per_family": {f: sum(v) / len(v) for f, v in sorted(fam.items())},
            "n_per_family": {f: len(v) for f, v in sorted(fam.items())},
        }
    return out


def format_summary(summary: dict) -> str:
    """One compact line: condition=rate, e.g. `text_following=0.99 vision_following=0.74 ...`."""
    short = {
        "text_following": "txtF",
        "vision_following": "visF",
        "consistent": "cons",
        "image_only": "img",
        "text_only": "txt",
        "no_instruction": "noI",
    }
    return " ".join(f"{short.get(c, c)}={v['rate']:.3f}" for c, v in summary.items())
