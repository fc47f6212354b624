"""The world's words for its concepts: template slots, the labels a prompt names, synonyms.

Templates use {colour}, {shape}, {background}; each slot ranges over the world's values. Every
word table is trust/world/vocabulary.py's (the one place those facts live); this module reads
prompts with it. Torch-free: `trust params check` uses it before any model is loaded.
"""

from __future__ import annotations

import itertools
import re
import string

import numpy as np

from trust.world.captions import all_words, fix_articles
from trust.world.vocabulary import BACKGROUND_WORDS, BACKGROUNDS, COLOUR_WORDS, COLOURS, SHAPE_WORDS, SHAPES

# The world classifier's heads, in the order captions name them, and the values each can take.
SLOT_VALUES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS}
WORD_TABLES: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": SHAPE_WORDS, "colour": COLOUR_WORDS, "background": BACKGROUND_WORDS}


def slots_of(template: str) -> list[str]:
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    unknown = sorted(set(names) - SLOT_VALUES.keys())
    if unknown:
        raise ValueError(f"template {template!r} uses unknown slot(s) {unknown}; allowed: {sorted(SLOT_VALUES)}")
    return list(dict.fromkeys(names))


def expand(template: str) -> list[tuple[str, dict[str, str]]]:
    """All fillings of a template: [(prompt, {slot: value})]."""
    names = slots_of(template)
    out = []
    for values in itertools.product(*(SLOT_VALUES[n] for n in names)):
        filled = dict(zip(names, values))
        out.append((fix_articles(template.format(**filled)), filled))
    return out


def _has(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def labels_of(prompt: str) -> dict[str, str]:
    """Detector labels a world prompt asks for, from its words (synonyms included)."""
    text = f" {prompt.lower()} "
    labels = {}
    for head, table in WORD_TABLES.items():
        for label, words in table.items():
            if any(_has(text, w) for w in words):
                labels[head] = label
    return labels


def word_for(prompt: str, head: str) -> str | None:
    """The word (canonical or synonym) `prompt` uses for its `head` label; longest match first."""
    text = f" {prompt.lower()} "
    label = labels_of(prompt).get(head)
    if label is None:
        return None
    return next((w for w in sorted(WORD_TABLES[head][label], key=len, reverse=True) if _has(text, w)), None)


def substitute(prompt: str, head: str, value: str, rng: np.random.Generator | None = None) -> str:
    """`prompt` with its word for `head` replaced by a word for `value`: the synonym at the same
    place in the table (crimson -> azure for red -> blue), or a random one with `rng`."""
    old = word_for(prompt, head)
    if old is None:
        return prompt
    label = labels_of(prompt)[head]
    i = WORD_TABLES[head][label].index(old)
    words = WORD_TABLES[head][value]
    new = words[rng.integers(len(words))] if rng is not None else words[min(i, len(words) - 1)]
    return fix_articles(re.sub(rf"\b{re.escape(old)}\b", new, prompt, count=1))


def synonym_variants(prompt: str, heads: list[str]) -> list[str]:
    """`prompt` with the words of `heads` replaced by every combination of their synonyms
    (the prompt itself first): "a red circle" over shape -> "a red disk", "a red disc", ..."""
    choices = []
    for h in heads:
        old = word_for(prompt, h)
        choices.append([(h, old, w) for w in WORD_TABLES[h][labels_of(prompt)[h]]] if old else [(h, None, None)])
    out = []
    for combo in itertools.product(*choices):
        text = prompt
        for _h, old, new in combo:
            if old is not None:
                text = re.sub(rf"\b{re.escape(old)}\b", new, text, count=1)
        out.append(fix_articles(text))
    return list(dict.fromkeys(out))


def paraphrase(prompt: str, rng: np.random.Generator, heads: tuple[str, ...] | None = None) -> str:
    """Replace each canonical world word (of `heads`, default all) by a random synonym of it."""
    out = prompt
    for head, table in WORD_TABLES.items():
        if heads is not None and head not in heads:
            continue
        for canonical, words in table.items():
            if re.search(rf"\b{canonical}\b", out) and len(words) > 1:
                out = re.sub(rf"\b{canonical}\b", words[1 + rng.integers(len(words) - 1)], out)
    return fix_articles(out)


def unknown_words(text: str, known: set[str] | None = None) -> list[str]:
    """Words of `text` that are not single words of the world's vocabulary (the tokenizer splits
    them into pieces: "coloured" ends in the token "red")."""
    known = known if known is not None else set(all_words())
    return [w for w in dict.fromkeys(re.findall(r"[a-z0-9']+", text.lower())) if w not in known]


def kept_words(detect: dict[str, str], keep: list[dict[str, str]]) -> tuple[str, ...]:
    """Every word (synonyms included, one word each) of a kept label the target does not share, minus the
    words the target's own synonyms use ("three sided shape" gives "three" and "sided", not the circle's
    "round shape"'s "shape")."""
    target = {w for head, value in detect.items() for s in WORD_TABLES[head][value] for w in s.split()}
    out = []
    for want in keep:
        for head, value in want.items():
            if detect.get(head) != value:
                out += [w for s in WORD_TABLES[head][value] for w in s.split() if w not in target]
    return tuple(dict.fromkeys(out))
