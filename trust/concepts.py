"""Concept prompts: expand the `concept` block's templates into train/eval prompt sets.

Templates use {colour}, {shape}, {background}; each slot ranges over the world's values.
Paraphrases swap canonical words for synonyms ("a red circle" -> "a crimson disk"). Every
prompt carries the detector labels it should show (world classifier heads), read off its
words, so evaluation knows what "present" means for each prompt.
"""

from __future__ import annotations

import itertools
import re
import string

import numpy as np

from trust.config import ConceptParams, PromptsParams
from trust.world.captions import fix_articles
from trust.world.vocabulary import BACKGROUND_WORDS, BACKGROUNDS, COLOUR_WORDS, COLOURS, SHAPE_WORDS, SHAPES

SLOT_VALUES = {"colour": COLOURS, "shape": SHAPES, "background": BACKGROUNDS}
_WORD_TABLES = {"shape": SHAPE_WORDS, "colour": COLOUR_WORDS, "background": BACKGROUND_WORDS}


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


def labels_of(prompt: str) -> dict[str, str]:
    """Detector labels a world prompt asks for, from its words (synonyms included)."""
    text = f" {prompt.lower()} "
    labels = {}
    for head, table in _WORD_TABLES.items():
        for label, words in table.items():
            if any(re.search(rf"\b{re.escape(w)}\b", text) for w in words):
                labels[head] = label
    return labels


def paraphrase(prompt: str, rng: np.random.Generator) -> str:
    """Replace each canonical world word by a random synonym of it."""
    out = prompt
    for table in _WORD_TABLES.values():
        for canonical, words in table.items():
            if re.search(rf"\b{canonical}\b", out) and len(words) > 1:
                out = re.sub(rf"\b{canonical}\b", words[1 + rng.integers(len(words) - 1)], out)
    return fix_articles(out)


def _anchor(concept: ConceptParams, slots: dict[str, str], rng: np.random.Generator) -> str:
    fill = {n: slots.get(n) or SLOT_VALUES[n][rng.integers(len(SLOT_VALUES[n]))] for n in slots_of(concept.anchor)}
    return fix_articles(concept.anchor.format(**fill))


def build_prompt_sets(concept: ConceptParams, cfg: PromptsParams) -> dict:
    """The `prompts` stage's output (see docs/stages.md)."""
    rng = np.random.default_rng(cfg.seed)
    target = []
    for template in concept.target:
        for prompt, slots in expand(template):
            variants = [prompt] + ([paraphrase(prompt, rng)] if cfg.paraphrases else [])
            for v in dict.fromkeys(variants):
                target.append({"prompt": v, "anchor": _anchor(concept, slots, rng), "labels": labels_of(v)})
    preserve = [
        {"prompt": p, "anchor": None, "labels": labels_of(p)} for t in concept.preserve for p, _ in expand(t)
    ]
    out = {"concept": concept.model_dump(mode="json")}
    for role, rows in (("target", target), ("preserve", preserve)):
        rows = list({r["prompt"]: r for r in rows}.values())  # de-duplicate, keep order
        order = rng.permutation(len(rows))[: cfg.max_per_role]
        rows = [rows[i] for i in sorted(order)]
        n_eval = max(1, round(len(rows) * cfg.eval_fraction)) if len(rows) > 1 else 0
        eval_idx = set(rng.choice(len(rows), size=n_eval, replace=False).tolist()) if n_eval else set()
        out[role] = {
            "train": [r for i, r in enumerate(rows) if i not in eval_idx] or rows,
            "eval": [r for i, r in enumerate(rows) if i in eval_idx] or rows,
        }
    return out
