"""Captions for procedural scenes: templates x synonyms, plus shape-only and colour-only.

`caption(scene, rng)` draws one caption; `all_words()` lists every word any caption can
use, which is what the offline tokenizer's vocabulary is built from.
"""

from __future__ import annotations

import re

import numpy as np

from trust.world.scenes import Scene
from trust.world.vocabulary import BACKGROUND_WORDS, COLOUR_WORDS, SHAPE_WORDS

# {c} colour word, {s} shape word, {b} background word.
FULL_TEMPLATES = (
    "a {c} {s}",
    "a {c} {s} on a {b} background",
    "an image of a {c} {s}",
    "a picture of a {c} {s} on a {b} background",
    "{c} {s}",
    "a {s} that is {c}",
    "a {c} {s} with a {b} background",
    "a photo of a {c} {s} in front of a {b} background",
)
SHAPE_TEMPLATES = (
    "a {s}",
    "a {s} on a {b} background",
    "a picture of a {s}",
)
COLOUR_TEMPLATES = (
    "a {c} shape",
    "a {c} object on a {b} background",
    "something {c}",
)
EMPTY_TEMPLATES = (
    "a {b} background",
    "an empty {b} background",
)
# Share of captions by kind for scenes with a shape (the rest are full captions).
P_SHAPE_ONLY = 0.1
P_COLOUR_ONLY = 0.1
# Words prompts of later stages use (anchors, negations) that no template above contains.
EXTRA_WORDS = ("no", "without", "and", "the", "nothing", "background", "scene", "art", "style", "of")


def fix_articles(text: str) -> str:
    """'a emerald disk' -> 'an emerald disk' (and the reverse)."""
    text = re.sub(r"\ba ([aeiou])", r"an \1", text)
    return re.sub(r"\ban ([^aeiou\s])", r"a \1", text)


def fill(template: str, *, c: str = "", s: str = "", b: str = "") -> str:
    return fix_articles(template.format(c=c, s=s, b=b))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def caption(scene: Scene, rng: np.random.Generator) -> str:
    b = _pick(rng, BACKGROUND_WORDS[scene.background])
    if scene.shape is None:
        return fill(_pick(rng, EMPTY_TEMPLATES), b=b)
    s = _pick(rng, SHAPE_WORDS[scene.shape])
    c = _pick(rng, COLOUR_WORDS[scene.colour])
    r = rng.random()
    if r < P_SHAPE_ONLY:
        return fill(_pick(rng, SHAPE_TEMPLATES), s=s, b=b)
    if r < P_SHAPE_ONLY + P_COLOUR_ONLY:
        return fill(_pick(rng, COLOUR_TEMPLATES), c=c, b=b)
    return fill(_pick(rng, FULL_TEMPLATES), c=c, s=s, b=b)


def canonical_prompt(colour: str, shape: str, background: str | None = None) -> str:
    """The evaluation prompt: 'a <colour> <shape> on a <background> background'."""
    if background is None:
        return fill("a {c} {s}", c=colour, s=shape)
    return fill("a {c} {s} on a {b} background", c=colour, s=shape, b=background)


def all_words() -> list[str]:
    """Every word a caption or a later stage's prompt can use, sorted."""
    words: set[str] = set(EXTRA_WORDS) | {"a", "an"}
    for t in FULL_TEMPLATES + SHAPE_TEMPLATES + COLOUR_TEMPLATES + EMPTY_TEMPLATES:
        words |= set(re.sub(r"\{[csb]\}", " ", t).split())
    for table in (SHAPE_WORDS, COLOUR_WORDS, BACKGROUND_WORDS):
        for synonyms in table.values():
            for phrase in synonyms:
                words |= set(phrase.split())
    return sorted(words)
