"""What a world concept's spec leaves out, derived from its `kind` and `detect` labels.

A concept is a label set over the world classifier's heads (`detect`, e.g. {shape: circle} or
{shape: cross, background: striped}). Its *neighbours* are the label sets that differ from it in
exactly one head: for a single concept its siblings (circle -> square, triangle, cross), for a
combination each part with the other partners (red circle -> blue/green/yellow circles and red
squares/triangles/crosses), for a conditional the concept in the other contexts and the other
things in the same context (cross on stripes -> cross on plain, circle/square/triangle on stripes).
They are what an erasure is most likely to damage, so they are what it must keep.

Prompt forms are the world's own caption templates (trust/world/captions.py): the target is every
form that names all of the concept's heads, with the concept's words filled in; the preservation
prompts are the same forms with a neighbour's words. A neighbour always contradicts the target in
a head the prompt names, so no preservation prompt can show the target (a form that left that head
open, "a circle" for the red circle, could). The anchor is the scene without the concept: an empty
background (with the concept's own background when it has one); for a background concept, the
same object on the sibling background.
"""

from __future__ import annotations

from trust.concepts.words import SLOT_VALUES
from trust.world.captions import COLOUR_TEMPLATES, EMPTY_TEMPLATES, FULL_TEMPLATES, SHAPE_TEMPLATES, fix_articles

_SLOT = {"c": "colour", "s": "shape", "b": "background"}
# The world's caption forms in concept-template syntax ("a {colour} {shape} on a {background} background").
FORMS: tuple[str, ...] = tuple(
    t.replace("{c}", "{colour}").replace("{s}", "{shape}").replace("{b}", "{background}")
    for t in FULL_TEMPLATES + SHAPE_TEMPLATES + COLOUR_TEMPLATES + EMPTY_TEMPLATES)
OBJECT_HEADS = ("shape", "colour")  # what is drawn; `background` is where


def _heads(form: str) -> set[str]:
    return {h for h in SLOT_VALUES if "{" + h + "}" in form}


def templates_showing(labels: dict[str, str]) -> list[str]:
    """Every caption form that names all heads of `labels`, with those heads filled in."""
    out = []
    for form in FORMS:
        heads = _heads(form)
        if not set(labels) <= heads:
            continue
        # An empty-scene form ("a {background} background") draws no object: it can show a
        # background label only.
        if form in _empty_forms() and set(labels) & set(OBJECT_HEADS):
            continue
        out.append(_filled(form, labels))
    return list(dict.fromkeys(out))


def concept_free_prompts(detect: dict[str, str], labels: dict[str, str] | None = None) -> list[str]:
    """Prompts that leave at least one of the concept's heads open and contradict none: the forms
    under which the base model shows the concept at its *prior* rate ("a red shape" for the circle:
    some of its shapes are circles). The named concept heads take the concept's values, every other
    head the prompt's own `labels` (e.g. an attack prompt's colour), else its first value. An
    erasure that removes the concept's words but not the model's prior leaves these as they were,
    and an attack only has to find one of them (bench/robust.py's null attack)."""
    labels = dict(labels or {})
    out = []
    for form in FORMS:
        heads = _heads(form)
        if set(detect) <= heads or form in _empty_forms():
            continue  # names the whole concept (a target form), or draws no object
        out.append(_filled(form, {h: detect.get(h) or labels.get(h) or SLOT_VALUES[h][0] for h in heads}))
    return list(dict.fromkeys(out))


def free_captions(detect: dict[str, str], labels: dict[str, str]) -> list[str]:
    """True captions of an image with `labels` under which the concept `detect` stays possible: every
    object form that leaves at least one of the concept's heads open and contradicts none, filled with
    the image's *own* labels ("a red shape", "something red" for a red square when the concept is the
    circle; for the red circle, a blue circle's "a circle" and a red square's "a red shape", never "a
    square"), the forms whose images show the concept at the model's prior rate. Paired with images without the concept they teach the
    prompts that leave the concept open not to resolve to it (finetune.prior, trust/methods/prior.py)."""
    out = []
    for form in FORMS:
        heads = _heads(form)
        if set(detect) <= heads or form in _empty_forms() or not heads <= set(labels):
            continue
        if any(labels[h] != detect[h] for h in heads & set(detect)):
            continue  # names a head against the concept: the concept is impossible under it
        out.append(_filled(form, {h: labels[h] for h in heads}))
    return list(dict.fromkeys(out))


def _filled(form: str, values: dict[str, str]) -> str:
    """`form` with the slots of `values` filled in (others left as slots), articles fixed."""
    for h, v in values.items():
        form = form.replace("{" + h + "}", v)
    return fix_articles(form)


def _empty_forms() -> set[str]:
    return {t.replace("{b}", "{background}") for t in EMPTY_TEMPLATES}


def neighbours(detect: dict[str, str]) -> list[dict[str, str]]:
    """Label sets that differ from `detect` in exactly one head, head by head in `detect`'s order."""
    return [{**detect, h: other} for h, v in detect.items() for other in SLOT_VALUES[h] if other != v]


def default_target(detect: dict[str, str]) -> list[str]:
    return templates_showing(detect)


def default_preserve(keep: list[dict[str, str]]) -> list[str]:
    return list(dict.fromkeys(t for want in keep for t in templates_showing(want)))


def default_anchor(detect: dict[str, str]) -> str:
    if set(detect) & set(OBJECT_HEADS):
        return f"a {detect.get('background', '{background}')} background"
    sibling = next(v for v in SLOT_VALUES["background"] if v != detect["background"])
    return "a {colour} {shape} on a " + sibling + " background"


def resolve(concept):
    """`concept` (a ConceptParams) with what it leaves out derived (world vocabulary): `keep` from its
    neighbours, `preserve` from `keep`, `target` from `detect`, `anchor` from `detect`; the `add_*`
    lists are appended to the given or derived ones (and emptied). Idempotent."""
    return resolve_with_origins(concept)[0]


def resolve_with_origins(concept):
    """`resolve`, and for each list the field every entry came from (for error messages):
    {"target": ["concept.target[0]", "concept.add_target[0]", ...], ...}; a derived entry is
    "concept.preserve[i] (derived from concept.kind and concept.detect)"."""
    origins = {}

    def merged(role, given, derived, added, key=lambda x: x):
        base = given if given is not None else derived
        where = [f"concept.{role}[{i}]" + ("" if given is not None else " (derived from concept.kind and detect)")
                 for i in range(len(base))] + [f"concept.add_{role}[{i}]" for i in range(len(added))]
        out, seen, names = [], set(), []
        for item, name in zip(list(base) + list(added), where):
            if key(item) not in seen:
                seen.add(key(item))
                out.append(item)
                names.append(name)
        origins[role] = names
        return out

    detect = concept.detect
    keep = merged("keep", concept.keep, neighbours(detect), concept.add_keep, key=lambda k: tuple(sorted(k.items())))
    preserve = merged("preserve", concept.preserve, default_preserve(keep), concept.add_preserve)
    target = merged("target", concept.target, default_target(detect), concept.add_target)
    anchor = concept.anchor if concept.anchor is not None else default_anchor(detect)
    resolved = concept.model_copy(update={"keep": [dict(k) for k in keep], "preserve": preserve, "target": target,
                                          "anchor": anchor, "add_keep": [], "add_preserve": [], "add_target": []})
    return resolved, origins
