import pytest

from trust.concepts import build_prompt_sets, expand, labels_of, paraphrase
from trust.config import ConceptParams, PromptsParams
from trust.utils.seeding import numpy_rng


def test_expand_fills_every_slot_value():
    out = expand("a {colour} circle on a {background} background")
    assert len(out) == 8
    assert ("a red circle on a plain background", {"colour": "red", "background": "plain"}) in out
    with pytest.raises(ValueError, match="unknown slot.*texture"):
        expand("a {texture} circle")


def test_labels_and_paraphrases_agree():
    rng = numpy_rng(0)
    for prompt in ["a red circle", "a blue square on a striped background"]:
        para = paraphrase(prompt, rng)
        assert para != prompt and labels_of(para) == labels_of(prompt)
    assert labels_of("a crimson disk") == {"shape": "circle", "colour": "red"}


def test_prompt_sets_split_and_anchor():
    concept = ConceptParams()
    sets = build_prompt_sets(concept, PromptsParams(seed=3))
    train, held = sets["target"]["train"], sets["target"]["eval"]
    assert train and held and not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert all(r["labels"].get("shape") == "circle" for r in train + held)
    assert all(r["anchor"].endswith("background") and "circle" not in r["anchor"] for r in train)
    assert build_prompt_sets(concept, PromptsParams(seed=3)) == sets  # deterministic
