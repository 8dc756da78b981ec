"""Plain typed records that flow between stages.

A `ConflictItem` is one question about one image with two competing answers; a `Sample` is that item
rendered under one `Condition` (which source the instruction names, or which control it is).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from PIL import Image


class Condition(str, enum.Enum):
    """The experimental conditions (docs/method.md §1)."""

    TEXT_FOLLOWING = "text_following"  # conflict, instruction: trust the text
    VISION_FOLLOWING = "vision_following"  # conflict, instruction: trust the image
    CONSISTENT = "consistent"  # context agrees with the image
    IMAGE_ONLY = "image_only"  # no context
    TEXT_ONLY = "text_only"  # no image
    NO_INSTRUCTION = "no_instruction"  # conflict, no modality instruction (default preference)


CONFLICT_CONDITIONS = (Condition.TEXT_FOLLOWING, Condition.VISION_FOLLOWING)


def parse_conditions(names: Iterable[str], key: str) -> tuple[Condition, ...]:
    """Condition names from the configuration key `key`, each checked (UserError names the key)."""
    from .errors import UserError

    try:
        return tuple(Condition(c) for c in names)
    except ValueError as exc:
        raise UserError(f"{key}: {exc}; conditions are {', '.join(c.value for c in Condition)}") from None


@dataclass(frozen=True)
class ConflictItem:
    """One conflict item: the image shows `answer_image`, `context` claims `answer_text`."""

    item_id: str
    task: str
    question: str
    answer_image: str
    answer_text: str
    context: str
    image: Image.Image | None
    consistent_context: str | None = None
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("item_id", "task", "question", "answer_image", "answer_text", "context"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"item {self.item_id!r}: {name} must be text, not {type(value).__name__} {value!r}")
            if name != "task" and not value.strip():
                raise ValueError(f"item {self.item_id!r}: {name} is empty")
        if self.consistent_context is not None and not isinstance(self.consistent_context, str):
            raise ValueError(f"item {self.item_id!r}: consistent_context must be text or absent")
        for answer, variants in self.synonyms.items():
            if not isinstance(answer, str) or not all(isinstance(v, str) and v.strip() for v in variants):
                raise ValueError(f"item {self.item_id!r}: synonyms must map an answer to a list of non-empty words")
        if not self.answer_image.strip() or not self.answer_text.strip():
            raise ValueError(f"item {self.item_id}: both answers must be non-empty")
        if self.answer_image.strip().lower() == self.answer_text.strip().lower():
            raise ValueError(f"item {self.item_id}: the two answers are equal ({self.answer_image!r}), no conflict")


@dataclass(frozen=True)
class Sample:
    """An item rendered under one condition: the prompt parts and which answer counts as following."""

    item_id: str
    task: str
    condition: Condition
    image: Image.Image | None
    context: str | None
    instruction: str | None
    question: str
    format: str
    following: str  # the answer the condition asks for (for controls: the correct answer)
    competitor: str
    following_variants: tuple[str, ...] = ()
    competitor_variants: tuple[str, ...] = ()
