"""Per-model item filter (docs/method.md §1): keep the items a model answers correctly from the image alone
and from the text alone, so that a conflict measures arbitration, not ignorance of either source.

"Correctly" is the toolkit's own score: under IMAGE_ONLY the following answer is the image's, under
TEXT_ONLY the text's, and an item is kept when both samples *follow* (binary-constrained p > 0.5).
Items whose two answers share every first token under this model's tokenizer cannot be scored at all;
they are dropped and listed apart (`unscorable`) instead of stopping the whole filter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...core.errors import UserError
from ...core.prompt import render
from ...core.records import Condition, ConflictItem
from ...core.scoring import ScoredSample, answer_ids

CONTROLS = (Condition.IMAGE_ONLY, Condition.TEXT_ONLY)


@dataclass(frozen=True)
class FilterReport:
    n_total: int
    n_kept: int
    per_task: dict[str, dict[str, int]]  # task -> {"kept": k, "total": n}
    dropped: tuple[str, ...]  # every dropped item id, in input order
    failed_image_only: tuple[str, ...]
    failed_text_only: tuple[str, ...]
    unscorable: tuple[str, ...]
    #: the control scores behind the decision, for a per-sample table; not part of `to_dict`
    rows: tuple[ScoredSample, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "n_total": self.n_total,
            "n_kept": self.n_kept,
            "per_task": self.per_task,
            "n_dropped": len(self.dropped),
            "dropped": list(self.dropped),
            "failed_image_only": list(self.failed_image_only),
            "failed_text_only": list(self.failed_text_only),
            "unscorable": list(self.unscorable),
        }


def filter_items(
    adapter,
    items: Sequence[ConflictItem],
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    **templates: str,
) -> tuple[list[ConflictItem], FilterReport]:
    """The items both controls follow, in input order, and a report of what was dropped and why.

    `templates` are passed to `render` (text_instruction, vision_instruction, format_sentence), so the
    controls see the same format sentence as the run they filter for.
    """
    from ...models.scoring import score_samples

    items = list(items)
    ids = [it.item_id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise UserError(f"item ids must be unique to filter items; {dup!r} repeats")
    samples, unscorable = [], []
    for it in items:
        pair = [_render(it, c, templates) for c in CONTROLS]
        if all(_scorable(adapter.tokenizer, s) for s in pair):
            samples += pair
        else:
            unscorable.append(it.item_id)
    rows = score_samples(adapter, samples, batch_size=batch_size, on_batch=on_batch)
    follows = {(r.item_id, r.condition): r.follows for r in rows}

    def failed(condition: Condition) -> tuple[str, ...]:
        return tuple(i for i in ids if (i, condition.value) in follows and not follows[(i, condition.value)])

    failed_image, failed_text = failed(Condition.IMAGE_ONLY), failed(Condition.TEXT_ONLY)
    dropped = set(unscorable) | set(failed_image) | set(failed_text)
    kept = [it for it in items if it.item_id not in dropped]
    report = FilterReport(
        n_total=len(items),
        n_kept=len(kept),
        per_task=_per_task(items, kept),
        dropped=tuple(i for i in ids if i in dropped),
        failed_image_only=failed_image,
        failed_text_only=failed_text,
        unscorable=tuple(unscorable),
        rows=tuple(rows),
    )
    return kept, report


def _render(item: ConflictItem, condition: Condition, templates: dict):
    try:
        return render(item, condition, **templates)
    except ValueError as exc:
        raise UserError(f"cannot filter: {exc}") from None


def _scorable(tokenizer, sample) -> bool:
    try:
        answer_ids(tokenizer, sample)
    except UserError:
        return False
    return True


def _per_task(items: Sequence[ConflictItem], kept: Sequence[ConflictItem]) -> dict[str, dict[str, int]]:
    total, good = Counter(it.task for it in items), Counter(it.task for it in kept)
    return {task: {"kept": good[task], "total": total[task]} for task in sorted(total)}
