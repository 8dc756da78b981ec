"""The synthetic conflict generator: deterministic, fingerprinted, and its answers match its pixels."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from PIL import Image

from mllm_arb.core.records import Condition
from mllm_arb.data.synthetic import (
    INSTRUCTION_PARAPHRASES,
    SyntheticConfig,
    fingerprint,
    generate_items,
)
from mllm_arb.core.prompt import TEXT_INSTRUCTION, VISION_INSTRUCTION, render
from mllm_arb.data.scenes import COLORS, FAMILIES, SHAPES, Blob, Scene, draw

N = 160  # 40 items per family


@pytest.fixture(scope="module")
def items():
    return generate_items(SyntheticConfig(n_items=N, seed=1000))


# ------------------------------------------------------------------ reading attributes back from pixels
def foreground(image: Image.Image) -> np.ndarray:
    """Pixels at least half covered by an object (the background is a uniform dark grey)."""
    a = np.asarray(image.convert("RGB")).astype(float)
    bg = np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)
    diff = np.abs(a - bg).sum(axis=2)
    return diff > 0.5 * np.percentile(diff, 99.5)


def components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        comp, queue = [], deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            comp.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        out.append(comp)
    return out


def read_color(image: Image.Image) -> str:
    a = np.asarray(image.convert("RGB")).astype(float)
    mean = a[foreground(image)].mean(axis=0)
    return min(COLORS, key=lambda c: float(np.sum((np.array(COLORS[c]) - mean) ** 2)))


def read_position(image: Image.Image) -> str:
    ys, xs = np.nonzero(foreground(image))
    half = image.size[0] / 2
    dx, dy = xs.mean() + 0.5 - half, ys.mean() + 0.5 - half
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def coverage(image: Image.Image) -> np.ndarray:
    """How much of each pixel an object covers (0..1), from its distance to the background colour."""
    a = np.asarray(image.convert("RGB")).astype(float)
    bg = np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)
    diff = np.abs(a - bg).sum(axis=2)
    return np.clip(diff / np.percentile(diff, 99.5), 0, 1)


def read_shape(image: Image.Image) -> str:
    """The shape whose rendering, placed and scaled from the pixels' moments, best matches the image.

    Centre and size come from the observed coverage (area and centroid), not from the recorded scene.
    """
    cov = coverage(image)
    size = image.size[0]
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    area, cy, cx = cov.sum(), (cov * ys).sum() / cov.sum(), (cov * xs).sum() / cov.sum()

    def render(shape, x, y, r):
        return coverage_of(draw(Scene(size, 0, (Blob(shape, "white", x, y, r),), ((255, 255, 255),))))

    def error(shape):
        probe = render(shape, size / 2, size / 2, size / 5)  # unit measurements of this shape
        k = probe.sum() / (size / 5) ** 2
        oy = (probe * ys).sum() / probe.sum() - size / 2
        ox = (probe * xs).sum() / probe.sum() - size / 2
        r = float(np.sqrt(area / k))
        fitted = render(shape, cx - ox * r / (size / 5), cy - oy * r / (size / 5), r)
        return float(np.abs(fitted - cov).sum())

    return min(SHAPES, key=error)


def coverage_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L")).astype(float) / 255.0


# ------------------------------------------------------------------ tests
def test_same_config_gives_identical_items_and_pixels(items):
    again = generate_items(SyntheticConfig(n_items=N, seed=1000))
    for a, b in zip(items, again):
        assert (a.item_id, a.task, a.question, a.answer_image, a.answer_text, a.context, a.consistent_context) == (
            b.item_id, b.task, b.question, b.answer_image, b.answer_text, b.context, b.consistent_context
        )  # fmt: skip
        assert a.image.tobytes() == b.image.tobytes()


def test_a_smaller_dataset_is_a_prefix_and_start_is_a_window(items):
    small = generate_items(SyntheticConfig(n_items=12, seed=1000))
    window = generate_items(SyntheticConfig(n_items=4, seed=1000, start=8))
    assert [i.image.tobytes() for i in small] == [i.image.tobytes() for i in items[:12]]
    assert [i.item_id for i in window] == [i.item_id for i in items[8:12]]


def test_seeds_give_disjoint_splits(items):
    train = generate_items(SyntheticConfig(n_items=N, seed=0))
    assert not {i.image.tobytes() for i in train} & {i.image.tobytes() for i in items}
    assert not {i.item_id for i in train} & {i.item_id for i in items}


def test_fingerprint_is_stable_and_tracks_every_field():
    base = SyntheticConfig(n_items=10, seed=3)
    assert fingerprint(base) == fingerprint(SyntheticConfig(n_items=10, seed=3))
    variants = [
        SyntheticConfig(n_items=11, seed=3),
        SyntheticConfig(n_items=10, seed=4),
        SyntheticConfig(n_items=10, seed=3, image_size=48),
        SyntheticConfig(n_items=10, seed=3, families=("color", "shape", "position")),
        SyntheticConfig(n_items=10, seed=3, paraphrase_prompts=False),
    ]
    assert len({fingerprint(v) for v in variants} | {fingerprint(base)}) == len(variants) + 1


def test_items_have_every_field_and_balanced_families(items):
    counts: dict[str, int] = {}
    for it in items:
        counts[it.task] = counts.get(it.task, 0) + 1
        assert it.image.mode == "RGB" and it.image.size == (32, 32)
        words = lambda text: text.rstrip(".").split(" ")  # noqa: E731
        assert it.consistent_context and it.answer_image in words(it.consistent_context)
        assert it.answer_text in words(it.context) and it.answer_image not in words(it.context)
        assert it.answer_image in FAMILIES[it.task].values and it.answer_text in FAMILIES[it.task].values
        assert it.question in FAMILIES[it.task].questions
    assert set(counts) == {"color", "shape", "position", "counting"}
    assert len(set(counts.values())) == 1


def test_every_condition_renders(items):
    for it in items[:8]:
        samples = {c: render(it, c) for c in Condition}
        assert samples[Condition.TEXT_FOLLOWING].following == it.answer_text
        assert samples[Condition.VISION_FOLLOWING].following == it.answer_image
        assert samples[Condition.CONSISTENT].context == it.consistent_context
        assert samples[Condition.IMAGE_ONLY].context is None
        assert samples[Condition.TEXT_ONLY].image is None
        assert samples[Condition.NO_INSTRUCTION].instruction is None


def test_drawn_attributes_match_the_recorded_answers(items):
    readers = {
        "color": read_color,
        "position": read_position,
        "shape": read_shape,
        "counting": lambda im: ("one", "two", "three", "four")[len(components(foreground(im))) - 1],
    }
    wrong = [(it.item_id, it.task, it.answer_image, readers[it.task](it.image)) for it in items if readers[it.task](it.image) != it.answer_image]
    assert not wrong, wrong


def test_every_item_in_a_colour_or_shape_scene_has_one_object(items):
    for it in items:
        if it.task in ("color", "shape", "position"):
            assert len(components(foreground(it.image))) == 1, it.item_id


def test_paraphrases_keep_the_study_sentences_first():
    assert INSTRUCTION_PARAPHRASES["text"][0] == TEXT_INSTRUCTION
    assert INSTRUCTION_PARAPHRASES["vision"][0] == VISION_INSTRUCTION
    for kind in ("text", "vision"):
        assert len(set(INSTRUCTION_PARAPHRASES[kind])) >= 4


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="unknown attribute families"):
        SyntheticConfig(families=("color", "smell"))


def test_data_config_builds_items():
    from omegaconf import OmegaConf

    from mllm_arb.data.sources import build_items

    data = OmegaConf.create({"source": "synthetic", "n_items": 8, "seed": 1000, "limit": 5, "families": ["color", "shape"]})
    items, fp = build_items(data)
    assert len(items) == 5 and {i.task for i in items} == {"color", "shape"}
    assert fp == fingerprint(SyntheticConfig(n_items=5, seed=1000, families=("color", "shape")))
