"""A concept spec on the built-in world: what it leaves out is derived from its kind, its prompts
split three ways, and its mistakes are refused (the CLI cases are in test_bad_params.py)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from trust.concepts import build_prompt_sets, labels_of, neighbours, resolve, shows
from trust.concepts.spec import label_problems, pieces, template_problems
from trust.concepts.words import WORD_TABLES
from trust.config import ConceptParams, PromptsParams


def test_neighbours_by_kind_hand_listed():
    # single: the siblings; combination: each part with the other partners; conditional: the
    # concept in the other context and the other things in the same context.
    assert neighbours({"shape": "circle"}) == [{"shape": "square"}, {"shape": "triangle"}, {"shape": "cross"}]
    combo = neighbours({"shape": "circle", "colour": "red"})
    assert sorted(map(str, combo)) == sorted(map(str, [
        {"shape": "square", "colour": "red"}, {"shape": "triangle", "colour": "red"}, {"shape": "cross", "colour": "red"},
        {"shape": "circle", "colour": "green"}, {"shape": "circle", "colour": "blue"},
        {"shape": "circle", "colour": "yellow"}]))
    cond = neighbours({"shape": "cross", "background": "striped"})
    assert sorted(map(str, cond)) == sorted(map(str, [
        {"shape": "cross", "background": "plain"}, {"shape": "circle", "background": "striped"},
        {"shape": "square", "background": "striped"}, {"shape": "triangle", "background": "striped"}]))


def _every_world_concept():
    from trust.concepts.words import SLOT_VALUES

    for head, values in SLOT_VALUES.items():
        for v in values:
            yield "single", {head: v}
    for a, b in itertools.combinations(SLOT_VALUES, 2):
        for va, vb in itertools.product(SLOT_VALUES[a], SLOT_VALUES[b]):
            yield ("conditional" if "background" in (a, b) else "combination"), {a: va, b: vb}


def test_concept_free_prompts_hand_listed():
    """The forms that leave a concept head open, hand-listed from trust/world/captions.py: none names
    the whole concept, none contradicts it, every other head comes from the prompt's labels."""
    from trust.concepts.neighbours import concept_free_prompts

    assert concept_free_prompts({"shape": "circle"}, {"colour": "blue", "background": "striped"}) == [
        "a blue shape", "a blue object on a striped background", "something blue"]
    # a combination: either part alone can show it
    assert concept_free_prompts({"shape": "circle", "colour": "red"}) == [
        "a circle", "a circle on a plain background", "a picture of a circle",
        "a red shape", "a red object on a plain background", "something red"]
    # a conditional: the object without its context (and the context with another object left open)
    free = concept_free_prompts({"shape": "cross", "background": "striped"}, {"colour": "green"})
    assert "a green cross" in free and "a green object on a striped background" in free
    assert not any("plain" in p for p in free) and "a cross on a striped background" not in free
    for p in free:  # none shows the whole concept by its words; none names another value of its heads
        labels = labels_of(p)
        assert not (labels.get("shape") == "cross" and labels.get("background") == "striped"), p
        assert labels.get("shape", "cross") == "cross" and labels.get("background", "striped") == "striped", p
    assert concept_free_prompts({"shape": "circle"}, {"colour": "yellow"})[0] == "a yellow shape"


@pytest.mark.parametrize("kind, detect", list(_every_world_concept()), ids=str)
def test_derived_spec_is_valid_for_every_world_concept(kind, detect):
    concept = ConceptParams(name="x", kind=kind, detect=detect)
    assert label_problems(concept) == []
    c = resolve(concept)
    assert template_problems(c) == []  # no target prompt misses a label, no preservation prompt can show it
    sets = build_prompt_sets(c, PromptsParams())
    for split in ("train", "val", "eval"):
        assert sets["target"][split], split
        assert all(shows(r["labels"], detect) for r in sets["target"][split])
        assert not any(shows(labels_of(r["anchor"]), detect) for r in sets["target"][split])
        for want in c.keep:  # every kept concept has prompts on every side
            assert any(shows(r["labels"], want) for r in sets["preserve"][split]), (want, split)
    for r in sets["preserve"]["train"] + sets["preserve"]["eval"]:
        assert any(h in r["labels"] and r["labels"][h] != v for h, v in detect.items()), r


def test_split_is_three_way_disjoint_and_the_train_side_has_every_synonym():
    concept = ConceptParams(name="red-circle", kind="combination", detect={"shape": "circle", "colour": "red"})
    sets = build_prompt_sets(concept, PromptsParams(seed=5))
    t = {s: [r["prompt"] for r in sets["target"][s]] for s in ("train", "val", "eval")}
    assert not set(t["train"]) & set(t["val"]) and not set(t["train"]) & set(t["eval"]) and not set(t["val"]) & set(t["eval"])
    text = " ".join(f" {p} " for p in t["train"])
    for head in ("shape", "colour"):
        label = concept.detect[head]
        for word in WORD_TABLES[head][label]:  # "a scarlet round shape": every wording is trained on
            assert f" {word} " in text or f" {word}" in text, word
    # the held-out prompts use synonyms too (not only the canonical words)
    assert any("circle" not in p for p in t["eval"][:16]) and any("red" not in p for p in t["eval"][:16])
    assert build_prompt_sets(concept, PromptsParams(seed=5)) == sets


def test_user_overrides_and_additions():
    concept = ConceptParams(name="c", kind="single", detect={"shape": "circle"}, keep=[{"shape": "square"}],
                            add_keep=[{"colour": "red", "shape": "cross"}], add_target=["a circle and nothing else"])
    c = resolve(concept)
    assert c.keep == [{"shape": "square"}, {"colour": "red", "shape": "cross"}]
    assert any("square" in t for t in c.preserve) and any("red cross" in t for t in c.preserve)
    assert not any("triangle" in t for t in c.preserve)
    assert c.target[-1] == "a circle and nothing else" and c.add_target == []
    assert resolve(c) == c  # idempotent


def test_unknown_word_shows_what_the_world_tokenizer_makes_of_it(root):
    assert pieces("coloured", root / "models" / "world" / "tokenizer") == "'c' + 'ol' + 'ou' + 'red'"
    problems = template_problems(resolve(ConceptParams(target=["a coloured circle"])),
                                 root / "models" / "world" / "tokenizer")
    assert problems == ["concept.target[0]: 'coloured' is not a word of the world's vocabulary; its tokenizer reads "
                        "it as 'c' + 'ol' + 'ou' + 'red', not as one word (did you mean 'colour'?); use a word of "
                        "trust/world/vocabulary.py"] or "coloured" in problems[0]


def test_params_check_loads_no_model(root):
    """The spec is checked by the schema alone: neither torch nor a model is imported."""
    code = ("import sys; from trust.config import load_params; p = load_params('params.yaml'); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(len(p.concept.keep))")
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "3"


def test_split3_puts_every_stratum_on_the_train_side_and_keeps_the_shares():
    import numpy as np

    from trust.concepts.prompts import split3

    rows = [{"prompt": f"{s}{i}", "s": s} for s, n in zip("abcdef", (1, 1, 1, 3, 3, 3)) for i in range(n)]
    out = split3(rows, lambda r: r["s"], 100, PromptsParams(val_fraction=0.2, eval_fraction=0.3),
                 np.random.default_rng(0))
    assert {r["s"] for r in out["train"]} == set("abcdef")
    assert sorted(r["prompt"] for s in out.values() for r in s) == sorted(r["prompt"] for r in rows)
    assert out["val"] and out["eval"]
    big = [{"prompt": str(i)} for i in range(100)]
    out = split3(big, lambda r: (), 100, PromptsParams(val_fraction=0.2, eval_fraction=0.3), np.random.default_rng(0))
    assert (len(out["train"]), len(out["val"]), len(out["eval"])) == (50, 20, 30)
    assert len(split3(big, lambda r: (), 10, PromptsParams(), np.random.default_rng(0))["train"]) == 5  # the cap
