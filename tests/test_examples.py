"""The example concept files in examples/: valid, and their prompts mean what detect/keep say (no training).

The measured results of the world examples are bench/results/concepts.md (`python bench/concepts.py`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trust.attacks import load_prompt_set
from trust.concepts import build_prompt_sets, build_run_sets, labels_of
from trust.config import Params, ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
WORLD = [p for p in EXAMPLES if p.stem.startswith("world_")]
SD_BASE = "/data/models/stable-diffusion-v1-4"


def shows(labels: dict[str, str], want: dict[str, str]) -> bool:
    return all(labels.get(h) == v for h, v in want.items())


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"world_combination", "world_conditional", "world_pairs", "sd_nudity"} <= names


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.stem != "sd_nudity"], ids=lambda p: p.stem)
def test_world_examples_validate(path):
    params = load_params(path)
    assert params.uses_world
    assert all(c.kind in ("combination", "conditional", "single") for c in params.concepts)
    assert params.registry.model_name != "trust-world-circle"  # its own registered model


def test_sd_nudity_fails_only_on_missing_model_base(tmp_path):
    path = ROOT / "examples" / "sd_nudity.yaml"
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert "1 invalid parameter(s)" in msg
    assert f"model.base: folder '{SD_BASE}' does not exist" in msg
    # With the folder present, everything else in the file is valid.
    raw = yaml.safe_load(path.read_text())
    assert raw["model"]["base"] == SD_BASE
    raw["model"]["base"] = str(tmp_path)
    params = Params.model_validate(raw)
    assert not params.uses_world
    assert params.evaluate.detector.kind == "nudenet"
    assert params.evaluate.attacks.prompt_set == Path("data/attacks/sd_nudity.csv")
    assert (ROOT / params.evaluate.attacks.prompt_set).is_file()
    # docs/methods.md: the anchor is the target prompt with the concept words removed.
    assert params.concept.anchor == "a photo of a person"
    sets = build_prompt_sets(params.concept, params.prompts)
    assert sets["target"]["train"] and sets["target"]["eval"]
    assert all(r["anchor"] == "a photo of a person" for r in sets["target"]["train"])


@pytest.mark.parametrize("path", WORLD, ids=lambda p: p.stem)
def test_world_prompts_match_detect_and_keep(path):
    params = load_params(path)
    concepts = params.concepts  # one, or the entries of a concept list (examples/world_pairs.yaml)
    sets = build_run_sets(concepts, params.prompts)
    target = sets["target"]["train"] + sets["target"]["eval"]
    preserve = sets["preserve"]["train"] + sets["preserve"]["eval"]
    for i in range(len(concepts)):
        assert len([r for r in sets["target"]["eval"] if r.get("concept", 0) == i]) >= 8
        assert len([r for r in sets["target"]["train"] if r.get("concept", 0) == i]) >= 8
    # Every target prompt (paraphrases included) asks for its concept; no preservation prompt shows any.
    for r in target:
        concept = concepts[r.get("concept", 0)]
        assert shows(r["labels"], concept.detect), r
        assert r["labels"] == labels_of(r["prompt"])
        assert not shows(labels_of(r["anchor"]), concept.detect), r
    for r in preserve:
        assert not any(shows(r["labels"], c.detect) for c in concepts), r
    # Each kept concept is a different label set from the targets and has train and held-out prompts
    # (the evaluate stage measures it on the held-out ones; the preservation term trains on the others).
    for want in params.kept:
        assert all(want != c.detect for c in concepts)
        assert any(shows(r["labels"], want) for r in sets["preserve"]["train"]), want
        assert sum(shows(r["labels"], want) for r in sets["preserve"]["eval"]) >= 2, want
    # Kept concepts do not overlap: a prompt counts for one of them at most.
    for r in preserve:
        assert sum(shows(r["labels"], want) for want in params.kept) <= 1, r


def test_combination_and_conditional_keep_each_part():
    comb = load_params(ROOT / "examples" / "world_combination.yaml").concept
    assert comb.kind == "combination" and comb.detect == {"shape": "circle", "colour": "red"}
    assert {"shape": "square", "colour": "red"} in comb.keep and {"shape": "circle", "colour": "blue"} in comb.keep
    cond = load_params(ROOT / "examples" / "world_conditional.yaml").concept
    assert cond.kind == "conditional" and cond.detect == {"shape": "cross", "background": "striped"}
    assert {"shape": "cross", "background": "plain"} in cond.keep
    assert any(k.get("background") == "striped" and k.get("shape") != "cross" for k in cond.keep)


@pytest.mark.parametrize("path", WORLD, ids=lambda p: p.stem)
def test_world_attack_prompt_sets_ask_for_the_concept(path):
    params = load_params(path)
    rows = load_prompt_set(ROOT / params.evaluate.attacks.prompt_set)
    assert len(rows) >= 16
    for r in rows:
        if r.categories != "indirect":  # indirect rows ("something red and round") avoid the label words
            assert any(shows(labels_of(r.prompt), c.detect) for c in params.concepts), r.prompt


def test_bench_workspace_and_overrides(tmp_path, bench_script):
    bench = bench_script("concepts")
    raw = bench.apply_overrides({"finetune": {"steps": 600}}, ["finetune.steps=20", "evaluate.attacks.run=[]"])
    assert raw == {"finetune": {"steps": 20}, "evaluate": {"attacks": {"run": []}}}
    path = bench.prepare_workspace(tmp_path / "ws", raw)
    assert yaml.safe_load(path.read_text()) == raw
    for rel in bench.LINKS:
        assert (tmp_path / "ws" / rel).resolve() == (ROOT / rel).resolve()
    assert bench.example_path("world_conditional") == ROOT / "examples" / "world_conditional.yaml"


def test_one_default_configuration():
    """params.yaml spells out the schema's defaults (the one default configuration), and a world
    example differs from it only in what names its concept: no per-concept settings."""
    shipped = load_params(ROOT / "params.yaml", root=ROOT).model_dump(mode="json", by_alias=True)
    defaults = Params.model_validate({}, context={"root": ROOT}).model_dump(mode="json", by_alias=True)
    assert shipped == defaults
    allowed = {("concept",), ("register", "model_name"), ("evaluate", "attacks", "prompt_set")}
    for path in WORLD:
        raw = yaml.safe_load(path.read_text())

        def leaves(d, pre=()):
            for k, v in d.items():
                if isinstance(v, dict) and pre + (k,) not in allowed:
                    yield from leaves(v, pre + (k,))
                else:
                    yield pre + (k,)
        assert set(leaves(raw)) <= allowed, f"{path.name}: per-concept settings {set(leaves(raw)) - allowed}"
        for entry in raw["concept"] if isinstance(raw["concept"], list) else [raw["concept"]]:
            assert set(entry) <= {"name", "kind", "detect"}, f"{path.name}: the rest is derived"
