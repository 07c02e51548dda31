"""The generated shapes-with-captions dataset: seeded, held-out combinations, captions match pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from contrastlab.data.shapes_captions import (
    COLOURS,
    SHAPES,
    ShapesCaptionsDataModule,
    ShapeScene,
    captions_for,
    held_out,
    held_out_combos,
    render,
)


@pytest.fixture(scope="module")
def dm():
    module = ShapesCaptionsDataModule(num_train=300, num_val=120, batch_size=16, captions_per_image=3)
    module.setup()
    return module


def _mentions(caption: str, scene: ShapeScene) -> bool:
    """The caption names the scene's shape (singular or plural) and names no other shape or colour."""
    words = set(re.findall(r"\w+", caption))
    shapes = {s for s in SHAPES if words & {s, s + "s", s + "es"}}
    colours = words & set(COLOURS)
    return shapes == {scene.shape} and colours <= {scene.colour}


def test_same_seed_same_data_other_seed_other_data(dm):
    again = ShapesCaptionsDataModule(num_train=300, num_val=120, captions_per_image=3)
    again.setup()
    assert torch.equal(again.train_split.images, dm.train_split.images)
    assert again.train_split.captions == dm.train_split.captions
    other = ShapesCaptionsDataModule(num_train=300, num_val=120, captions_per_image=3, seed=1)
    other.setup()
    assert not torch.equal(other.train_split.images, dm.train_split.images)


def test_validation_holds_only_unseen_scene_combinations(dm):
    def combo(s):
        return (s.shape, s.colour, s.size, s.position)

    train, val = {combo(s) for s in dm.train_scenes}, {combo(s) for s in dm.val_scenes}
    assert train.isdisjoint(val) and val <= held_out_combos("scene", 0)
    # every shape–colour pair is still seen in training, in other sizes and positions
    assert {(s.shape, s.colour) for s in dm.val_scenes} <= {(s.shape, s.colour) for s in dm.train_scenes}
    assert len(held_out_combos("scene", 0)) == len(SHAPES) * len(COLOURS)
    assert held_out_combos("scene", 0) != held_out_combos("scene", 1)


def test_shape_colour_holdout_never_shows_the_pair():
    module = ShapesCaptionsDataModule(num_train=300, num_val=60, holdout="shape_colour", holdout_offset=2)
    module.setup()
    train_pairs = {(s.shape, s.colour) for s in module.train_scenes}
    val_pairs = {(s.shape, s.colour) for s in module.val_scenes}
    assert train_pairs.isdisjoint(val_pairs)
    assert all(held_out(s, c, 2) for s, c in val_pairs)
    assert len(val_pairs) == len(SHAPES)  # one held-out colour per shape
    assert len(train_pairs) == len(SHAPES) * (len(COLOURS) - 1)


def test_labels_and_captions_agree(dm):
    assert dm.class_names == list(SHAPES)
    for split, scenes in ((dm.train_split, dm.train_scenes), (dm.val_split, dm.val_scenes)):
        for caps, label, scene in zip(split.captions, split.labels.tolist(), scenes, strict=True):
            assert len(caps) == 3 and len(set(caps)) == 3  # distinct phrasings
            assert all(_mentions(c, scene) for c in caps)
            assert SHAPES.index(scene.shape) == label
    held = ShapesCaptionsDataModule(num_train=50, num_val=20, label="colour")
    held.setup()
    assert held.class_names == list(COLOURS)
    assert held.val_split.labels.tolist() == [list(COLOURS).index(s.colour) for s in held.val_scenes]


def test_pixels_show_the_captioned_colour_in_the_captioned_half():
    rng = np.random.default_rng(0)
    for position in ("left", "right", "top", "bottom"):
        for colour in ("red", "blue"):
            img = render(ShapeScene("square", colour, "large", position, 2), 32, rng).astype(float) / 255
            target = np.array(COLOURS[colour])[:, None, None]
            close = (np.abs(img - target) < 0.2).all(0)
            assert close.sum() > 40  # the shapes are there, in their colour
            ys, xs = np.nonzero(close)
            centre = {"left": xs.mean() < 16, "right": xs.mean() > 16, "top": ys.mean() < 16, "bottom": ys.mean() > 16}
            assert centre[position]


def test_captions_read_naturally():
    rng = np.random.default_rng(0)
    caps = captions_for(ShapeScene("cross", "green", "small", "left", 2), 7, rng)
    assert "two small green crosses on the left" in caps and "a picture of two crosses" in caps
    assert all("crosses" in c for c in caps)
    one = captions_for(ShapeScene("ring", "cyan", "large", "top", 1), 7, rng)
    assert all("ring" in c and "rings" not in c for c in one)


def test_batches(dm):
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert len(batch["text"]) == 16 and isinstance(batch["text"][0], str)
    captions, owner = dm.val_captions()
    assert len(captions) == 3 * 120 and owner.tolist()[:6] == [0, 0, 0, 1, 1, 1]
    images = next(iter(dm.val_image_dataloader()))
    assert images["image"].shape == (16, 3, 32, 32) and images["index"].tolist() == list(range(16))
    assert len(dm.train_texts()) == 900


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match="data.label"):
        ShapesCaptionsDataModule(label="size")
    with pytest.raises(ValueError, match="data.holdout"):
        ShapesCaptionsDataModule(holdout="colour")
