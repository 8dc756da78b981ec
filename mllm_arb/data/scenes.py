"""The organism's visual world: procedurally drawn scenes and the words that describe them.

Every attribute family has a closed set of answer words, a few question and context phrasings, and a
scene sampler that draws an image whose attribute is known by construction. Scenes are drawn at
`SUPERSAMPLE`× resolution and box-filtered down, so shapes are anti-aliased and positions and sizes are
continuous (two seeds practically never give the same pixels).

This module only draws; `mllm_arb.data.synthetic` turns scenes into `ConflictItem` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4

#: pure-ish RGB of each colour word (a small per-item jitter is added)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 185, 45),
    "blue": (45, 80, 235),
    "yellow": (240, 225, 35),
    "purple": (150, 50, 205),
    "orange": (255, 140, 0),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
COUNTS: tuple[str, ...] = ("one", "two", "three", "four")


@dataclass(frozen=True)
class Family:
    """One attribute family: its answer words and how questions and contexts are phrased."""

    name: str
    values: tuple[str, ...]
    questions: tuple[str, ...]
    #: context sentences with `{a}` for the claimed answer; the first is the canonical one
    contexts: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "color",
            tuple(COLORS),
            ("What color is the object?", "What is the color of the object?"),
            ("The object in the image is {a}.", "The color of the object is {a}."),
        ),
        Family(
            "shape",
            SHAPES,
            ("What shape is the object?", "What is the shape of the object?"),
            ("The object in the image is a {a}.", "The image shows a {a}."),
        ),
        Family(
            "position",
            POSITIONS,
            ("Where is the object in the image?", "On which side of the image is the object?"),
            ("The object is at the {a} of the image.", "The object is placed at the {a}."),
        ),
        Family(
            "counting",
            COUNTS,
            ("How many objects are in the image?", "How many objects does the image show?"),
            ("The number of objects in the image is {a}.", "The count of objects is {a}."),
        ),
    )
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


@dataclass(frozen=True)
class Blob:
    """One drawn object, in output-pixel units (centre, radius)."""

    shape: str
    color: str
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class Scene:
    """What is drawn: a background grey level and a few objects. The attribute values are exact."""

    size: int
    background: int
    objects: tuple[Blob, ...]
    rgb: tuple[tuple[int, int, int], ...]  # the jittered colour actually used for each object

    def attribute(self, family: str) -> str:
        first = self.objects[0]
        if family == "color":
            return first.color
        if family == "shape":
            return first.shape
        if family == "counting":
            return COUNTS[len(self.objects) - 1]
        if family == "position":
            return position_of(first, self.size)
        raise KeyError(family)


def position_of(blob: Blob, size: int) -> str:
    """The side of the image a single object sits on (the sampler keeps it unambiguous)."""
    dx, dy = blob.cx - size / 2, blob.cy - size / 2
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


# ------------------------------------------------------------------------------------ sampling
def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 14) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


def sample_scene(rng: np.random.Generator, family: str, size: int, answer: str) -> Scene:
    """Draw the parameters of a scene whose `family` attribute is `answer`."""
    s = float(size)
    background = int(rng.integers(0, 41))
    shape = str(rng.choice(SHAPES))
    color = str(rng.choice(tuple(COLORS)))
    if family == "shape":
        shape = answer
    elif family == "color":
        color = answer
    if family in ("color", "shape"):
        r = float(rng.uniform(0.15, 0.24)) * s
        cx, cy = (float(rng.uniform(r + 1, s - r - 1)) for _ in range(2))
        blobs = [Blob(shape, color, cx, cy, r)]
    elif family == "position":
        r = float(rng.uniform(0.11, 0.16)) * s
        along = float(rng.uniform(0.36, 0.64)) * s  # centred on the other axis: no corner ambiguity
        near = float(rng.uniform(r + 1, 0.27 * s))
        cx, cy = {
            "left": (near, along),
            "right": (s - near, along),
            "top": (along, near),
            "bottom": (along, s - near),
        }[answer]
        blobs = [Blob(shape, color, cx, cy, r)]
    elif family == "counting":
        # dots of one size: counting is about the number of separate objects, nothing else
        n = COUNTS.index(answer) + 1
        r = float(rng.uniform(0.105, 0.115)) * s
        blobs = []
        while len(blobs) < n:  # rejection sampling: objects never touch
            cx, cy = (float(rng.uniform(r + 1, s - r - 1)) for _ in range(2))
            if all(math.hypot(cx - b.cx, cy - b.cy) >= r + b.r + 3 for b in blobs):
                blobs.append(Blob("circle", color, cx, cy, r))
    else:
        raise KeyError(f"unknown attribute family {family!r}; known: {', '.join(FAMILY_NAMES)}")
    base = COLORS[color]
    rgb = tuple(_jitter(rng, base) for _ in blobs)
    scene = Scene(size=size, background=background, objects=tuple(blobs), rgb=rgb)
    if scene.attribute(family) != answer:  # the sampler's invariant: the answer is what is drawn
        raise RuntimeError(f"scene sampler drew {scene.attribute(family)!r} for a {family} item meant to show {answer!r}")
    return scene


# ------------------------------------------------------------------------------------ drawing
def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.82
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a) + 0.15 * r) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "cross":
        w, h = r * 0.34, r
        return [
            (cx - w, cy - h), (cx + w, cy - h), (cx + w, cy - w), (cx + h, cy - w), (cx + h, cy + w), (cx + w, cy + w),
            (cx + w, cy + h), (cx - w, cy + h), (cx - w, cy + w), (cx - h, cy + w), (cx - h, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise KeyError(shape)


def draw(scene: Scene) -> Image.Image:
    """Render a scene into an RGB image of `scene.size` pixels."""
    k = SUPERSAMPLE
    big = Image.new("RGB", (scene.size * k, scene.size * k), (scene.background,) * 3)
    pen = ImageDraw.Draw(big)
    for blob, rgb in zip(scene.objects, scene.rgb):
        cx, cy, r = blob.cx * k, blob.cy * k, blob.r * k
        if blob.shape == "circle":
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        else:
            pen.polygon(_polygon(blob.shape, cx, cy, r), fill=rgb)
    return big.resize((scene.size, scene.size), Image.Resampling.BOX)
