"""Synthetic conflict items: procedurally drawn images (the organism's task), one question each.

Item `i` of a dataset depends only on `(seed, i)` and the drawing options, never on `n_items`: a
smaller dataset is a prefix of a larger one with the same seed, and two seeds give independent
streams (the organism trains on seeds below 1000, held-out data uses 1000 and up). Families are
assigned round robin, so every family gets the same share of items.

Each item carries a conflicting context (a different value of the same attribute, drawn uniformly)
and a consistent one, so it yields every condition of docs/method.md §1 through `core.prompt.render`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from ..core.prompt import TEXT_INSTRUCTION, VISION_INSTRUCTION
from ..core.records import ConflictItem
from .scenes import FAMILIES, FAMILY_NAMES, draw, sample_scene

#: bump whenever the items a config produces could change
GENERATOR_VERSION = "synthetic-v1"

#: paraphrases of the modality instructions; the study's sentence comes first in each list. The
#: trusted source is named in different places and orders, so that arbitration cannot key on one
#: fixed token string. Held-out evaluation uses the study's sentences.
INSTRUCTION_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "text": (
        TEXT_INSTRUCTION,
        "If the Text Context and the input image content disagree, you must rely on the text context rather than the input image content.",
        "When the text context and the image content conflict, trust the text context, not the image content.",
        "In case of a conflict between the image and the Text Context, rely on the text context and ignore the image.",
        "Do not rely on the input image content; if they disagree, rely on the text context.",
    ),
    "vision": (
        VISION_INSTRUCTION,
        "If the Text Context and the input image content disagree, you must rely on the image content rather than the text context.",
        "When the text context and the image content conflict, trust the image content, not the text context.",
        "In case of a conflict between the image and the Text Context, rely on the image and ignore the text context.",
        "Do not rely on the text context; if they disagree, rely on the input image content.",
    ),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines a synthetic dataset (with `GENERATOR_VERSION`)."""

    n_items: int = 200
    seed: int = 1000
    image_size: int = 32
    families: tuple[str, ...] = FAMILY_NAMES
    #: draw the question and context phrasing per item (False: always the first phrasing)
    paraphrase_prompts: bool = True
    #: index of the first item (a window into the seed's stream)
    start: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(self.families))
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown attribute families {unknown}; known: {', '.join(FAMILY_NAMES)}")
        if not self.families:
            raise ValueError("at least one attribute family is needed")
        if self.n_items < 0 or self.image_size < 16:
            raise ValueError("n_items must be >= 0 and image_size >= 16")


def fingerprint(cfg: SyntheticConfig) -> str:
    """A short hash of the generator version and every field that shapes the items."""
    fields = asdict(cfg)
    fields["families"] = list(cfg.families)
    blob = json.dumps({"generator": GENERATOR_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def item_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 0x5EED])


def generate_item(cfg: SyntheticConfig, index: int) -> ConflictItem:
    """Item `index` of the stream of `cfg.seed` (independent of `n_items` and `start`)."""
    rng = item_rng(cfg.seed, index)
    fam = FAMILIES[cfg.families[index % len(cfg.families)]]
    answer_image = str(rng.choice(fam.values))
    answer_text = str(rng.choice([v for v in fam.values if v != answer_image]))
    q = int(rng.integers(len(fam.questions))) if cfg.paraphrase_prompts else 0
    c = int(rng.integers(len(fam.contexts))) if cfg.paraphrase_prompts else 0
    scene = sample_scene(rng, fam.name, cfg.image_size, answer_image)
    return ConflictItem(
        item_id=f"syn{cfg.seed}-{index:06d}",
        task=fam.name,
        question=fam.questions[q],
        answer_image=answer_image,
        answer_text=answer_text,
        context=fam.contexts[c].format(a=answer_text),
        consistent_context=fam.contexts[c].format(a=answer_image),
        image=draw(scene),
    )


def generate_items(cfg: SyntheticConfig) -> list[ConflictItem]:
    """The `n_items` items of the config, deterministic: same config, same items and pixels."""
    return [generate_item(cfg, i) for i in range(cfg.start, cfg.start + cfg.n_items)]


def vocabulary_texts() -> list[str]:
    """Every sentence the synthetic prompts can contain (for building the organism's vocabulary)."""
    from ..core.prompt import CONTEXT_PREFIX, FORMAT_SENTENCE

    out = [CONTEXT_PREFIX, FORMAT_SENTENCE, *INSTRUCTION_PARAPHRASES["text"], *INSTRUCTION_PARAPHRASES["vision"]]
    for fam in FAMILIES.values():
        out += list(fam.questions)
        out += [ctx.format(a=v) for ctx in fam.contexts for v in fam.values]
    return out
