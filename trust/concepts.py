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


def anchor_for(concept: ConceptParams, slots: dict[str, str], rng: np.random.Generator) -> str:
    """The concept's anchor prompt for a target prompt with these slot values; a slot the
    prompt does not fill gets a random value (from `rng`)."""
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
                target.append({"prompt": v, "anchor": anchor_for(concept, slots, rng), "labels": labels_of(v)})
    preserve = [
        {"prompt": p, "anchor": None, "labels": labels_of(p)} for t in concept.preserve for p, _ in expand(t)
    ]
    out = {"concept": concept.model_dump(mode="json")}
    out["target"] = _split(_dedupe(target), cfg, rng)
    # Preservation prompts are split per kept concept, so each one has held-out prompts.
    rows = _dedupe(preserve)
    groups = [[r for r in rows if _shows(r, want)] for want in concept.keep] or [rows]
    grouped = {r["prompt"] for g in groups for r in g}
    groups.append([r for r in rows if r["prompt"] not in grouped])
    parts = [_split(g, cfg, rng) for g in groups if g]
    out["preserve"] = {split: [r for p in parts for r in p[split]] for split in ("train", "eval")}
    return out


def _shows(row: dict, want: dict[str, str]) -> bool:
    return all(row["labels"].get(h) == v for h, v in want.items())


def _dedupe(rows: list[dict]) -> list[dict]:
    return list({r["prompt"]: r for r in rows}.values())


def _split(rows: list[dict], cfg: PromptsParams, rng: np.random.Generator) -> dict[str, list[dict]]:
    """Cap at max_per_role (drawn by seed), then hold out eval_fraction (at least one)."""
    order = rng.permutation(len(rows))[: cfg.max_per_role]
    rows = [rows[i] for i in sorted(order)]
    if len(rows) < 2:
        return {"train": rows, "eval": rows}
    n_eval = max(1, round(len(rows) * cfg.eval_fraction))
    held = set(rng.choice(len(rows), size=n_eval, replace=False).tolist())
    return {"train": [r for i, r in enumerate(rows) if i not in held], "eval": [r for i, r in enumerate(rows) if i in held]}
