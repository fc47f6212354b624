"""The world's concepts and the words that name them: the one place these facts live."""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
BACKGROUNDS: tuple[str, ...] = ("plain", "striped")

# Label used by every classifier head for "nothing of this kind in the image" (an empty
# background, noise). Without it an erased output would still be scored as some concept.
NONE = "none"

# RGB in [0, 1].
COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}

# Synonyms: the first entry is the canonical word. Paraphrases are built from these, so
# "a crimson disk" is a red circle.
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk", "disc", "round shape"),
    "square": ("square", "box", "block", "quadrilateral"),
    "triangle": ("triangle", "wedge", "three sided shape", "pyramid"),
    "cross": ("cross", "plus", "plus sign", "crucifix"),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "navy"),
    "yellow": ("yellow", "golden", "lemon"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "blank", "solid", "uniform"),
    "striped": ("striped", "stripy", "lined", "banded"),
}
