"""The re-erasure's library functions (trust/reerase) without a flow, a registry or a model:
leak rate, successful prompts, derived params, forcing prompts into the forget set."""

import json
from pathlib import Path

from trust.concepts import build_prompt_sets
from trust.reerase import SUCCESSFUL, derive_params, force_prompts, leak_rate, successful_prompts
from trust.stages import paths


def test_leak_rate_is_the_worst_of_target_rate_and_attacks():
    assert leak_rate({"target_rate": 0.25}) == (0.25, {})
    rate, asr = leak_rate({"target_rate": 0.25, "asr": {"p4d": 0.5, "ringabell": None, "nan": float("nan")}})
    assert rate == 0.5 and asr == {"p4d": 0.5}


def test_successful_prompts_most_hits_first_once_each(tmp_path):
    assert successful_prompts(tmp_path, 5) == []  # no evaluate output: nothing leaked
    rows = [{"prompt": "a", "attack": "none", "seeds": [1]}, {"prompt": "b", "attack": "p4d", "seeds": [1, 2, 3]},
            {"prompt": "a", "attack": "p4d", "seeds": [1, 2]}, {"prompt": "c", "attack": "none", "seeds": []}]
    (tmp_path / SUCCESSFUL).parent.mkdir(parents=True)
    (tmp_path / SUCCESSFUL).write_text(json.dumps(rows))
    assert [(r["prompt"], len(r["seeds"])) for r in successful_prompts(tmp_path, 5)] == [("b", 3), ("a", 2), ("c", 0)]
    assert [r["prompt"] for r in successful_prompts(tmp_path, 2)] == ["b", "a"]


def test_derived_params_absolute_paths_new_base_literal_targets(tmp_path, shipped_params, root):
    base = root / "models" / "world"  # validated: the base must be a model folder
    p = derive_params(shipped_params, root, tmp_path / "ws" / "params.yaml", base, ["a {weird} red circle"])
    assert p.model.base == base.resolve() and p.world.model_dir.is_absolute()
    assert p.evaluate.attacks.prompt_set.is_absolute()
    # an attack's prompt is trained on as written: not a template, not checked against the world's words
    assert p.concept.literal_targets == ["a {weird} red circle"]
    assert p.concept.target == shipped_params.concept.target
    sets = build_prompt_sets(p.concept, p.prompts)
    assert "a {weird} red circle" in [r["prompt"] for r in sets["target"]["train"]]
    assert "a {weird} red circle" not in [r["prompt"] for r in sets["target"]["eval"] + sets["target"]["val"]]
    assert (tmp_path / "ws" / "params.yaml").read_text().startswith("# derived by the reerase flow")


def test_forced_prompts_are_trained_on_and_measured_first(tmp_path, shipped_params):
    sets = build_prompt_sets(shipped_params.concept, shipped_params.prompts)
    (tmp_path / paths.PROMPTS).parent.mkdir(parents=True)
    (tmp_path / paths.PROMPTS).write_text(json.dumps(sets))
    known = sets["target"]["eval"][-1]["prompt"]
    new = "a crimson disk on a striped background"
    counts = force_prompts(tmp_path, shipped_params, [new, known])
    out = json.loads((tmp_path / paths.PROMPTS).read_text())
    train, held = out["target"]["train"], out["target"]["eval"]
    assert [r["prompt"] for r in train[-2:]] == [new, known] and [r["prompt"] for r in held[:2]] == [new, known]
    assert sum(r["prompt"] == known for r in held) == 1  # moved, not copied
    assert train[-2]["labels"] == {"shape": "circle", "colour": "red", "background": "striped"} and train[-2]["anchor"]
    assert counts == {"target_train": len(train), "target_eval": len(held)}
    assert out["reerase"] == {"forced_prompts": [new, known]}
