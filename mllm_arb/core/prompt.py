"""The prompt layout: the study's sentences, an item rendered under each condition, the user turn's
parts in layout order, and where each token group lies in a model's tokenized prompt (docs/method.md §1–2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from .errors import UserError
from .records import Condition, ConflictItem, Sample

#: the token groups every analysis speaks of (docs/method.md §2)
GROUPS = ("image", "context", "instruction", "question", "format", "system", "last")

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
    """Render one item under one condition (docs/method.md §1).

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


# -------------------------------------------------------------------- the user turn
SEGMENT_SEPARATOR = "\n"


def user_text(sample: Sample) -> str:
    return SEGMENT_SEPARATOR.join(text for _, text in user_segments(sample))


def chat_messages(sample: Sample) -> list[dict]:
    content: list[dict] = []
    if sample.image is not None:
        content.append({"type": "image"})
    content.append({"type": "text", "text": user_text(sample)})
    return [{"role": "user", "content": content}]


# -------------------------------------------------------------------- token groups
def segment_char_ranges(prompt: str, sample: Sample) -> dict[str, tuple[int, int]]:
    """Character ranges of the user-turn parts inside the rendered prompt."""
    text = user_text(sample)
    base = prompt.rfind(text)
    if base < 0:
        raise UserError("the chat template changed the user text; cannot locate the prompt parts")
    ranges, cursor = {}, base
    for group, part in user_segments(sample):
        ranges[group] = (cursor, cursor + len(part))
        cursor += len(part) + len(SEGMENT_SEPARATOR)
    return ranges


def token_groups(
    tokenizer, prompt: str, sample: Sample, row_ids: list[int], image_token_id: int, add_special_tokens: bool = True
) -> dict[str, list[int]]:
    """Positions of every group in one unpadded row of processor output.

    The processor expands image placeholders, so its ids are our own tokenization of the prompt with
    runs of image (and wrapper) tokens inserted. Aligning the two sequences maps each of our tokens,
    whose character offsets tell its group, onto its position in the row.
    """
    enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    own_ids, offsets = enc["input_ids"], enc["offset_mapping"]
    ranges = segment_char_ranges(prompt, sample)
    own_group = []
    for s0, e in offsets:
        s = s0
        while s < e and prompt[s].isspace():  # a leading space joins the word's group, not the previous one
            s += 1
        if s < e:
            hit = [g for g, (a, b) in ranges.items() if s < b and e > a]
        else:  # pure whitespace: inside a part it is that part's, between parts it is template text
            hit = [g for g, (a, b) in ranges.items() if a <= s0 and e <= b]
        own_group.append(hit[0] if hit else "system")
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    assigned = ["system"] * len(row_ids)
    matcher = difflib.SequenceMatcher(a=own_ids, b=row_ids, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            assigned[block.b + k] = own_group[block.a + k]
    for pos, tok in enumerate(row_ids):
        group = "image" if tok == image_token_id else assigned[pos]
        groups[group].append(pos)
    # the final position is `last` only: the chat template's closing text would otherwise put it in
    # `system` as well, and an edge into `system` would then also cut the answer position's reads
    final = len(row_ids) - 1
    for group in GROUPS:
        groups[group] = [pos for pos in groups[group] if pos != final]
    groups["last"] = [final]
    for group, _ in user_segments(sample):
        if not groups[group]:
            raise UserError(f"sample {sample.item_id}: no tokens found for the {group} part of the prompt")
    if sample.image is not None and not groups["image"]:
        raise UserError(f"sample {sample.item_id}: the processor output holds no image tokens (id {image_token_id})")
    return groups
