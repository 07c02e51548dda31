"""Shapes with captions: a generated, offline, seeded image–caption dataset for CLIP.

Each image shows 1–3 shapes of one kind and colour, all small or all large, placed in one half of
the picture (left / right / top / bottom), on a noisy background. Its captions are composed from
those attributes in a few phrasings, some naming every attribute (``"two small red triangles on the
left"``), some only a few (``"a picture of two triangles"``, ``"a blue ring"``).

Held-out combinations: validation shows only attribute combinations training never shows.
``holdout=scene`` (default) holds out, for every shape–colour pair, one of its eight size × position
settings: every attribute pair is seen in training, the val scenes (and their captions) never are.
``holdout=shape_colour`` holds out whole shape–colour pairs (a diagonal of the table: no red circle
at all in training), a harder test of composing attributes seen apart. Labels are the shape (or the
colour, ``label=colour``), for zero-shot classification with prompt templates.

Everything is drawn with numpy from ``seed``: the same config gives the same pixels and captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from contrastlab.data.image_text import ImageTextDataModule, ImageTextSplit
from contrastlab.errors import check_choice

Label = Literal["shape", "colour"]
Holdout = Literal["scene", "shape_colour"]

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
PLURALS = {"cross": "crosses"}
# every colour is clearly brighter than the (dark) backgrounds, so a shape's outline shows in any colour
COLOURS = {
    "red": (0.95, 0.2, 0.15),
    "green": (0.2, 0.85, 0.25),
    "blue": (0.25, 0.45, 1.0),
    "yellow": (0.95, 0.9, 0.2),
    "purple": (0.75, 0.3, 0.95),
    "cyan": (0.2, 0.85, 0.9),
}
SIZES = {"small": 0.14, "large": 0.22}  # shape radius as a fraction of the image side
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
COUNTS = {1: ("a", "one"), 2: ("two",), 3: ("three",)}
# full descriptions, and partial ones (real captions rarely name every attribute)
PHRASINGS = (
    "{count} {size} {colour} {shape} {position}",
    "a picture of {count} {size} {colour} {shape} {position}",
    "{position}, {count} {colour} {shape}, {size}",
    "{count} {shape} in {colour}, {size}, {position}",
    "{count} {colour} {shape}",
    "{count} {size} {shape} {position}",
    "a picture of {count} {shape}",
)


@dataclass(frozen=True)
class ShapeScene:
    shape: str
    colour: str
    size: str
    position: str
    count: int


def _mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.5 * r) ** 2)
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "cross":
        arm, half = 0.32 * r, r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= half)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= half))
    if shape == "triangle":  # apex up, base at cy + 0.8r, half-width r at the base
        t = (dy + r) / (1.8 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= r * t)
    raise ValueError(f"unknown shape '{shape}'")


def render(scene: ShapeScene, size: int, rng: np.random.Generator) -> np.ndarray:
    """(3, size, size) uint8: noisy background, ``scene.count`` shapes in the scene's half."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    base = rng.uniform(0.02, 0.22)
    tint = rng.uniform(-0.04, 0.04, size=3)
    gradient = rng.uniform(-0.08, 0.08) * (xx / size - 0.5) + rng.uniform(-0.08, 0.08) * (yy / size - 0.5)
    img = base + tint[:, None, None] + gradient[None] + rng.normal(0, 0.05, size=(3, size, size))
    r = SIZES[scene.size] * size * rng.uniform(0.9, 1.1)
    lo, hi, mid = r + 0.5, size - r - 0.5, size / 2
    x_range = {"left": (lo, mid - 0.2 * r), "right": (mid + 0.2 * r, hi)}.get(scene.position, (lo, hi))
    y_range = {"top": (lo, mid - 0.2 * r), "bottom": (mid + 0.2 * r, hi)}.get(scene.position, (lo, hi))
    centres: list[tuple[float, float]] = []
    for _ in range(scene.count):
        for _attempt in range(30):  # keep shapes apart when there is room
            c = (rng.uniform(*x_range), rng.uniform(*y_range))
            if all((c[0] - a) ** 2 + (c[1] - b) ** 2 >= (1.9 * r) ** 2 for a, b in centres):
                break
        centres.append(c)
    colour = np.clip(np.array(COLOURS[scene.colour]) + rng.uniform(-0.08, 0.08, size=3), 0, 1)
    for cx, cy in centres:
        m = _mask(scene.shape, xx, yy, cx, cy, r)
        img[:, m] = colour[:, None] + rng.normal(0, 0.03, size=(3, int(m.sum())))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def captions_for(scene: ShapeScene, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct phrasings (while there are enough) of the scene's attributes."""
    shape = scene.shape if scene.count == 1 else PLURALS.get(scene.shape, scene.shape + "s")
    words = COUNTS[scene.count]
    picks = rng.permutation(len(PHRASINGS))[:n] if n <= len(PHRASINGS) else rng.integers(0, len(PHRASINGS), n)
    out = []
    for p in picks:
        count = words[int(rng.integers(len(words)))]
        out.append(
            PHRASINGS[p].format(
                count=count, size=scene.size, colour=scene.colour, shape=shape, position=POSITIONS[scene.position]
            )
        )
    return out


Combo = tuple[str, str, str, str]  # shape, colour, size, position


def held_out(shape: str, colour: str, offset: int) -> bool:
    """The shape–colour diagonal held out by ``holdout=shape_colour``."""
    return (SHAPES.index(shape) + list(COLOURS).index(colour)) % len(COLOURS) == offset


def held_out_combos(mode: str, seed: int, offset: int = 0) -> set[Combo]:
    """The (shape, colour, size, position) combinations only validation shows.

    ``scene``: for every shape–colour pair, one of its eight size × position settings (drawn with
    ``seed``), so every pair of attributes is seen in training but the val scenes never are.
    ``shape_colour``: every setting of the pairs with ``(shape + colour) % n_colours == offset`` (a shape
    is never seen in that colour: the harder, compositional split).
    """
    combos = [(s, c, z, p) for s in SHAPES for c in COLOURS for z in SIZES for p in POSITIONS]
    if mode == "shape_colour":
        return {t for t in combos if held_out(t[0], t[1], offset)}
    check_choice(mode, Holdout, "data.holdout")
    rng = np.random.default_rng(seed)
    settings = [(z, p) for z in SIZES for p in POSITIONS]
    return {(s, c, *settings[int(rng.integers(len(settings)))]) for s in SHAPES for c in COLOURS}


def sample_scenes(n: int, rng: np.random.Generator, combos: list[Combo], max_large_count: int = 2) -> list[ShapeScene]:
    """``n`` scenes drawn uniformly from ``combos``, each with 1–3 shapes (at most ``max_large_count`` large)."""
    scenes = []
    for _ in range(n):
        shape, colour, size, position = combos[int(rng.integers(len(combos)))]
        count = int(rng.integers(1, (max_large_count if size == "large" else 3) + 1))
        scenes.append(ShapeScene(shape, colour, size, position, count))
    return scenes


def make_split(
    n: int, image_size: int, seed: int, combos: list[Combo], captions_per_image: int, label: str
) -> tuple[ImageTextSplit, list[ShapeScene]]:
    """``n`` scenes of ``combos``: the split and its scenes."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng, combos)
    images = torch.from_numpy(np.stack([render(s, image_size, rng) for s in scenes])) if n else torch.empty(0)
    captions = [captions_for(s, captions_per_image, rng) for s in scenes]
    names = SHAPES if label == "shape" else tuple(COLOURS)
    labels = torch.tensor([names.index(getattr(s, label)) for s in scenes], dtype=torch.long)
    return ImageTextSplit(images, captions, labels), scenes


class ShapesCaptionsDataModule(ImageTextDataModule):
    """Generated coloured shapes with captions (see the module docstring).

    Args:
        num_train, num_val: images per split (val holds only the held-out combinations).
        captions_per_image: phrasings per image (each is a training pair; all are retrieval targets).
        label: ``shape`` or ``colour``, the class of zero-shot classification.
        holdout: ``scene`` (held-out shape–colour–size–position combinations) or ``shape_colour``
            (held-out shape–colour pairs), see :func:`held_out_combos`.
        holdout_offset: which diagonal of the shape × colour table ``shape_colour`` holds out (0..5).
        seed: the same seed gives the same images and captions.
    """

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 600,
        captions_per_image: int = 2,
        label: Label = "shape",
        holdout: Holdout = "scene",
        holdout_offset: int = 0,
        image_size: int = 32,
        templates: Sequence[str] = ("a {}", "one {}", "a picture of a {}"),
        **kwargs: Any,
    ) -> None:
        check_choice(label, Label, "data.label")
        if captions_per_image < 1:
            raise ValueError(f"data.captions_per_image must be >= 1, got {captions_per_image}.")
        kwargs.setdefault("mean", (0.2, 0.2, 0.2))
        kwargs.setdefault("std", (0.25, 0.25, 0.25))
        names = SHAPES if label == "shape" else tuple(COLOURS)
        super().__init__(
            templates=templates, class_names=list(names), image_size=image_size, num_classes=len(names), **kwargs
        )
        self.num_train, self.num_val, self.captions_per_image = num_train, num_val, captions_per_image
        check_choice(holdout, Holdout, "data.holdout")
        self.label, self.holdout, self.holdout_offset = label, holdout, holdout_offset
        self.train_scenes: list[ShapeScene] = []
        self.val_scenes: list[ShapeScene] = []

    def load_image_text(self) -> tuple[ImageTextSplit, ImageTextSplit]:
        held = held_out_combos(self.holdout, self.seed, self.holdout_offset)
        everything = [(s, c, z, p) for s in SHAPES for c in COLOURS for z in SIZES for p in POSITIONS]
        train_combos, val_combos = [t for t in everything if t not in held], sorted(held)
        size, cap, label = self.image_size, self.captions_per_image, self.label
        train, self.train_scenes = make_split(self.num_train, size, self.seed, train_combos, cap, label)
        val, self.val_scenes = make_split(self.num_val, size, self.seed + 1, val_combos, cap, label)
        return train, val
