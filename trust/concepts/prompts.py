"""Concept prompts: expand the `concept` block into train / validation / held-out prompt sets.

Target prompts are the concept's templates filled with every world value of their slots, each in
every synonym of the concept's own words ("a red circle" -> "a red disk", "a red disc", ...), the
other words paraphrased at random ("a crimson disk on a banded background"). They are split three
ways, stratified by the synonyms used, so the training side names the concept in every wording it
will be asked in: `train` (the forget set), `val` (what training checks its bar on, cheaply) and
`eval` (held out: never seen by training or by its stopping rule; the evaluate stage's prompts).
Preservation prompts are split the same way within each kept concept, so each one has validation
and held-out prompts. Every prompt carries the detector labels it should show (world classifier
heads), read off its words.

The output (data/prompts.json): {"concept": the resolved concept block, "target": {train, val,
eval}, "preserve": {train, val, eval}}; each row {prompt, anchor, labels}. Several concepts
(`build_run_sets`): {"concepts": [resolved blocks], "keep": the run's kept label sets, "target": every
concept's rows, each with "concept": its index, "preserve": every concept's rows once, less those
that show an erased concept}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from trust.concepts.neighbours import resolve
from trust.concepts.words import SLOT_VALUES, expand, labels_of, paraphrase, slots_of, synonym_variants, word_for
from trust.world.captions import fix_articles

if TYPE_CHECKING:
    from trust.config import ConceptParams, PromptsParams

SPLITS = ("train", "val", "eval")


def anchor_for(concept: "ConceptParams", slots: dict[str, str], rng: np.random.Generator) -> str:
    """The concept's anchor prompt for a target prompt with these slot values (labels); a slot the
    prompt does not fill gets a random value (from `rng`)."""
    anchor = resolve(concept).anchor
    fill = {n: slots.get(n) or SLOT_VALUES[n][rng.integers(len(SLOT_VALUES[n]))] for n in slots_of(anchor)}
    return fix_articles(anchor.format(**fill))


def shows(labels: dict[str, str], want: dict[str, str]) -> bool:
    return all(labels.get(h) == v for h, v in want.items())


def build_prompt_sets(concept: "ConceptParams", cfg: "PromptsParams", world: bool | None = None) -> dict:
    """The `prompts` stage's output (see docs/stages.md). `world`: the concept's words are world
    vocabulary (synonym expansion, derived defaults); on Stable Diffusion the prompts are the
    user's, as written. None: world when every detect label is a world classifier head."""
    rng = np.random.default_rng(cfg.seed)
    if world is None:
        world = set(concept.detect) <= set(SLOT_VALUES)
    concept = resolve(concept) if world else concept
    heads = list(concept.detect) if world else []
    target = []
    for template in concept.target:
        for prompt, _slots in (expand(template) if world else [(template, {})]):
            # every synonym of the concept's own words; the other words paraphrased at random
            for v in (synonym_variants(prompt, heads) if world and cfg.paraphrases else [prompt]):
                if world and cfg.paraphrases and rng.random() < 0.5:
                    v = paraphrase(v, rng, tuple(h for h in SLOT_VALUES if h not in heads))
                labels = labels_of(v) if world else {}
                target.append({"prompt": v, "anchor": anchor_for(concept, labels, rng) if world else concept.anchor,
                               "labels": labels})
    if not world and cfg.paraphraser is not None:
        from trust.concepts.paraphraser import paraphrases

        more = paraphrases(cfg.paraphraser, [r["prompt"] for r in target], cfg.paraphrases_per_prompt, cfg.seed)
        target = [r | {"source": r["prompt"]} for r in target] + [
            {"prompt": q, "anchor": concept.anchor, "labels": {}, "source": p} for p, qs in more.items() for q in qs]
    target = _dedupe(target)
    # stratum: the words the prompt uses for the concept (its synonyms), or the prompt a paraphrase
    # was written from, so each is on every side
    if heads:
        def key(r):
            return tuple(word_for(r["prompt"], h) for h in heads)
    else:
        def key(r):
            return r.get("source", ())
    out = {"concept": concept.model_dump(mode="json")}
    out["target"] = split3(target, key, cfg.max_per_role, cfg, rng)
    for split in out["target"].values():
        for r in split:
            r.pop("source", None)
    # prompts found to show the concept (re-erasure): trained on as written, never held out
    literal = [r for r in _dedupe([{"prompt": p, "anchor": anchor_for(concept, labels_of(p), rng) if world
                                    else concept.anchor, "labels": labels_of(p) if world else {}}
                                   for p in concept.literal_targets])
               if r["prompt"] not in {x["prompt"] for x in out["target"]["train"]}]
    out["target"]["train"] += literal

    preserve = []
    for t in concept.preserve:
        for p, _ in (expand(t) if world else [(t, {})]):
            variants = [p] + ([paraphrase(p, rng)] if world and cfg.paraphrases else [])
            preserve += [{"prompt": v, "anchor": None, "labels": labels_of(v) if world else {}} for v in variants]
    rows = _dedupe(preserve)
    groups = [[r for r in rows if shows(r["labels"], want)] for want in concept.keep] or [rows]
    grouped = {r["prompt"] for g in groups for r in g}
    groups.append([r for r in rows if r["prompt"] not in grouped])
    parts = [split3(g, lambda r: (), cfg.max_per_keep, cfg, rng) for g in groups if g]
    out["preserve"] = {s: [r for p in parts for r in p[s]] for s in SPLITS}
    return out


def _dedupe(rows: list[dict]) -> list[dict]:
    return list({r["prompt"]: r for r in rows}.values())


def split3(rows: list[dict], key, cap: int, cfg: "PromptsParams", rng: np.random.Generator) -> dict[str, list[dict]]:
    """At most `cap` rows, drawn round-robin over the strata `key(row)` (by seed), split into
    train / val / eval in the proportions of `cfg` (val_fraction, eval_fraction). The first row of
    every stratum goes to train, so the forget set covers every stratum. Fewer than 3 rows: every
    split is all of them (nothing can be held out). Val and eval are ordered round-robin over the
    strata, so a consumer that takes their first n prompts sees every stratum."""
    strata: dict = {}
    for r in rows:
        strata.setdefault(key(r), []).append(r)
    shuffled = [[s[i] for i in rng.permutation(len(s))] for s in strata.values()]
    picked = [[] for _ in shuffled]
    n = 0
    for i in range(max((len(s) for s in shuffled), default=0)):
        for j, s in enumerate(shuffled):
            if i < len(s) and n < cap:
                picked[j].append(s[i])
                n += 1
    if n < 3:
        flat = [r for s in picked for r in s]
        return {s: list(flat) for s in SPLITS}
    frac = {"train": 1.0 - cfg.val_fraction - cfg.eval_fraction, "val": cfg.val_fraction, "eval": cfg.eval_fraction}
    counts = dict.fromkeys(SPLITS, 0)
    out: dict[str, list[list[dict]]] = {s: [[] for _ in picked] for s in SPLITS}
    for j, stratum in enumerate(picked):
        for i, r in enumerate(stratum):
            if i == 0:
                split = "train"
            else:  # the split furthest below its share (a deterministic stride)
                total = sum(counts.values()) + 1
                split = max(SPLITS, key=lambda s: (frac[s] * total - counts[s], -SPLITS.index(s)))
            counts[split] += 1
            out[split][j].append(r)
    for s in ("val", "eval"):  # at least one each, from a stratum that keeps a train row if there is one
        if not counts[s]:
            j = max(range(len(picked)), key=lambda k: (len(out["train"][k]) > 1, len(out["train"][k])))
            out[s][j].append(out["train"][j].pop())
            counts[s] += 1
    return {s: _round_robin(out[s]) for s in SPLITS}


def _round_robin(lists: list[list[dict]]) -> list[dict]:
    return [lst[i] for i in range(max((len(x) for x in lists), default=0)) for lst in lists if i < len(lst)]


def build_run_sets(concepts: list, cfg: "PromptsParams", world: bool | None = None) -> dict:
    """The `prompts` stage's output for the concepts of one run. One concept: `build_prompt_sets`.
    Several: each concept's sets drawn as for that concept alone (same seed), merged: target rows
    tagged with their concept's index; preservation rows once, without those that show an erased
    concept (trust/concepts/multi.py), and a prompt one concept trains on is held out for none."""
    from trust.concepts.multi import erased_by, joint_keep

    if len(concepts) == 1:
        return build_prompt_sets(concepts[0], cfg, world)
    per = [build_prompt_sets(c, cfg, world) for c in concepts]
    resolved = [type(concepts[i]).model_validate(p["concept"]) for i, p in enumerate(per)]
    out = {"concepts": [p["concept"] for p in per], "keep": joint_keep(resolved)}
    out["target"] = {s: [r | {"concept": i} for i, p in enumerate(per) for r in p["target"][s]] for s in SPLITS}
    taken: set[str] = set()
    out["preserve"] = {}
    for s in SPLITS:  # train first: a prompt trained on for one concept is no held-out prompt for another
        rows = [r for p in per for r in p["preserve"][s]
                if r["prompt"] not in taken and not erased_by(r["labels"], resolved)]
        out["preserve"][s] = _dedupe(rows)
        taken |= {r["prompt"] for r in rows}
    trained = {r["prompt"] for r in out["target"]["train"]}
    for s in ("val", "eval"):  # the same for target prompts shared by two concepts' sets
        out["target"][s] = [r for r in out["target"][s] if r["prompt"] not in trained]
    return out


def rows_of(sets: dict, role: str, split: str, concept: int | None = None) -> list[dict]:
    """The rows of `role` (target / preserve) in `split`; `concept`: only that concept's target rows
    (a one-concept file's rows all belong to concept 0)."""
    rows = sets[role][split]
    return rows if concept is None else [r for r in rows if r.get("concept", 0) == concept]
