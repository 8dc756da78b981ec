"""Prompt sentences of the study and the rendering of an item under each condition."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .records import Condition, ConflictItem, Sample

TEXT_INSTRUCTION = (
    "In case there is an inconsistency between the Text Context and the input image content, "
    "you must rely on the text context rather than the input image content."
)
VISION_INSTRUCTION = (
    "In case there is an inconsistency between the Text Context and the input image content, "
    "you must rely on the image content rather than the text context."
)
FORMAT_SENTENCE = "Answer the question using a single word or phrase."
CONTEXT_PREFIX = "Text context: "


def render(
    item: ConflictItem,
    condition: Condition,
    text_instruction: str = TEXT_INSTRUCTION,
    vision_instruction: str = VISION_INSTRUCTION,
    format_sentence: str = FORMAT_SENTENCE,
) -> Sample:
    """Render one item under one condition (mission.md §1).

    For controls the *following* answer is the correct one and the competitor is the other answer,
    so the same binary-constrained score reads as accuracy. Under no instruction, *following* is the
    text answer: the MFR then reads as the model's default text preference.
    """
    c = Condition(condition)
    image, context, instruction = item.image, item.context, None
    following, competitor = item.answer_image, item.answer_text
    if c is Condition.TEXT_FOLLOWING:
        instruction = text_instruction
        following, competitor = item.answer_text, item.answer_image
    elif c is Condition.VISION_FOLLOWING:
        instruction = vision_instruction
    elif c is Condition.CONSISTENT:
        if not item.consistent_context:
            raise ValueError(f"item {item.item_id} has no consistent context")
        context = item.consistent_context
    elif c is Condition.IMAGE_ONLY:
        context = None
    elif c is Condition.TEXT_ONLY:
        image = None
        following, competitor = item.answer_text, item.answer_image
    elif c is Condition.NO_INSTRUCTION:
        following, competitor = item.answer_text, item.answer_image
    if c is not Condition.TEXT_ONLY and image is None:
        raise ValueError(f"item {item.item_id} has no image but condition {c.value} needs one")
    return Sample(
        item_id=item.item_id,
        task=item.task,
        condition=c,
        image=image,
        context=context,
        instruction=instruction,
        question=item.question,
        format=format_sentence,
        following=following,
        competitor=competitor,
        following_variants=tuple(item.synonyms.get(following, ())),
        competitor_variants=tuple(item.synonyms.get(competitor, ())),
    )


def render_all(items: Iterable[ConflictItem], conditions: Sequence[Condition | str], **templates: str) -> list[Sample]:
    """Every item under every condition, except the consistent condition for items that have no
    consistent context (real datasets cannot always derive one)."""
    items = list(items)
    return [
        render(it, Condition(c), **templates)
        for c in conditions
        for it in items
        if not (Condition(c) is Condition.CONSISTENT and not it.consistent_context)
    ]


def user_segments(sample: Sample) -> list[tuple[str, str]]:
    """The text parts of the user turn in layout order, as (group, text); the image comes before them."""
    parts: list[tuple[str, str]] = []
    if sample.context is not None:
        parts.append(("context", CONTEXT_PREFIX + sample.context))
    if sample.instruction is not None:
        parts.append(("instruction", sample.instruction))
    parts.append(("question", sample.question))
    parts.append(("format", sample.format))
    return parts
