"""The chat messages of a sample: one user turn, image first, then the text parts one per line."""

from __future__ import annotations

from ..data.records import Sample
from ..data.templates import user_segments

SEGMENT_SEPARATOR = "\n"


def user_text(sample: Sample) -> str:
    return SEGMENT_SEPARATOR.join(text for _, text in user_segments(sample))


def chat_messages(sample: Sample) -> list[dict]:
    content: list[dict] = []
    if sample.image is not None:
        content.append({"type": "image"})
    content.append({"type": "text", "text": user_text(sample)})
    return [{"role": "user", "content": content}]
