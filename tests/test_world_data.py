import numpy as np
import torch

from trust.world.captions import all_words, caption, canonical_prompt, fix_articles
from trust.world.data import scene_batch
from trust.world.scenes import random_scene, render
from trust.world.vocabulary import COLOUR_RGB, COLOUR_WORDS, SHAPE_WORDS
from trust.utils.seeding import numpy_rng


def test_same_seed_same_data_different_seed_different_data():
    a, b, c = scene_batch(7, 3, 16, 16), scene_batch(7, 3, 16, 16), scene_batch(8, 3, 16, 16)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (16, 3, 16, 16)
    assert a.images.min() >= -1 and a.images.max() <= 1


def test_batches_are_independent_of_order():
    # Batch i is a function of (seed, i) alone: what makes training resumable exactly.
    first = scene_batch(0, 5, 8, 16)
    scene_batch(0, 4, 8, 16)
    assert torch.equal(first.images, scene_batch(0, 5, 8, 16).images)


def test_render_draws_the_shape_in_its_colour():
    rng = numpy_rng(0)
    for _ in range(20):
        scene = random_scene(rng)
        img = render(scene, 32)
        dist = np.abs(img - np.array(COLOUR_RGB[scene.colour])).sum(-1)
        assert (dist < 0.05).sum() >= 20, scene  # a solid patch of the shape's colour
    empty = render(random_scene(rng, empty=True), 16)
    assert empty.std(axis=-1).max() < 1e-6  # grey only: no coloured pixel


def test_captions_use_synonyms_and_all_kinds():
    rng = numpy_rng(1)
    caps = [caption(random_scene(rng), rng) for _ in range(600)]
    words = set(" ".join(caps).split())
    assert {"crimson", "disk", "azure", "box"} <= words
    assert any(c.endswith(" shape") for c in caps)  # colour-only
    assert any(c in ("a circle", "a square", "a triangle", "a cross") for c in caps)  # shape-only
    assert all(not c.startswith("a e") and " a a" not in c for c in caps)  # articles fixed
    assert set(" ".join(caps).split()) <= set(all_words())


def test_synonym_tables_and_articles():
    assert SHAPE_WORDS["circle"][0] == "circle" and "crimson" in COLOUR_WORDS["red"]
    assert fix_articles("a emerald disk") == "an emerald disk"
    assert fix_articles("an red box") == "a red box"
    assert canonical_prompt("red", "circle", "striped") == "a red circle on a striped background"
