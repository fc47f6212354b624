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
    val = out["target"]["val"]
    assert [r["prompt"] for r in val[:2]] == [new, known]  # the round's bar checks them first
    assert len(val) == len(sets["target"]["val"]) + 2 - sum(r["prompt"] in (new, known) for r in sets["target"]["val"])
    assert train[-2]["labels"] == {"shape": "circle", "colour": "red", "background": "striped"} and train[-2]["anchor"]
    assert counts == {"target_train": len(train), "target_eval": len(held)}
    assert out["reerase"] == {"forced_prompts": [new, known]}


def _scripted(outcomes: dict[int, dict]):
    """A run_round whose round r returns outcomes[r] (leak, drop, broke) and records what it was given."""
    from trust.reerase.repair import Round

    given = {}

    def run_round(r: int, added: list[str]) -> Round:
        given[r] = list(added)
        o = outcomes[r]
        if o.get("bar") is False:
            return Round(r, added, error="bar not reached")
        passed = o["leak"] <= 0.10 and o["drop"] <= 0.10
        failed = {} if passed else {"max_asr": {"value": o["leak"], "limit": 0.10}} if o["leak"] > 0.10 else \
            {"max_preservation_drop": {"value": o["drop"], "limit": 0.10}}
        return Round(r, added, passed=passed, leak_rate=o["leak"], target_rate=0.0, worst_drop=o["drop"],
                     failed_gates=failed, broke_through=[{"prompt": p} for p in o.get("broke", [])])
    return run_round, given


def test_repair_stops_at_the_first_round_that_passes_and_adds_what_broke_through():
    from trust.reerase.repair import repair

    run_round, given = _scripted({1: {"leak": 0.30, "drop": 0.02, "broke": ["on object object", "a red circle"]},
                                  2: {"leak": 0.05, "drop": 0.04}, 3: {"leak": 0.0, "drop": 0.0}})
    rep = repair([{"prompt": "a red circle"}], 3, 32, run_round)
    assert [r.round for r in rep.rounds] == [1, 2] and 3 not in given  # stopped at round 2
    assert rep.passed and rep.chosen.round == 2
    assert given[1] == ["a red circle"]
    assert given[2] == ["a red circle", "on object object"]  # round 1's new find joins, once


def test_repair_budget_spent_returns_the_best_round_and_names_the_gate():
    from trust.reerase.repair import failure_message, repair

    run_round, given = _scripted({1: {"leak": 0.40, "drop": 0.0, "broke": ["x y"]}, 2: {"bar": False},
                                  3: {"leak": 0.05, "drop": 0.20}})
    rep = repair([], 3, 32, run_round)
    assert len(rep.rounds) == 3 and not rep.passed
    assert rep.chosen.round == 3  # max(leak, drop) 0.20 < 0.40
    msg = failure_message("m/1", {"leak_rate": 0.5, "gate": 0.1}, rep, 3)
    assert "max_preservation_drop 0.200 > 0.1" in msg and "best round 3" in msg and "production unchanged" in msg
    run_round, _ = _scripted({1: {"bar": False}, 2: {"bar": False}})
    rep = repair([], 2, 32, run_round)
    assert rep.chosen is None and "none of 2 repair round(s) reached" in failure_message("m/1", {"leak_rate": 0.5,
                                                                                               "gate": 0.1}, rep, 2)


def test_repair_rounds_gate_the_leak_rate_and_turn_the_inner_attack_on(tmp_path, shipped_params, root):
    from trust.reerase.repair import round_params

    prod = {"base_model": str(root / "models" / "world")}
    import shutil

    shutil.copytree(root / "models" / "world", tmp_path / "model")  # the materialised production model
    ev, ft = round_params(shipped_params, root, prod, tmp_path / "model", tmp_path / "round-2", ["a b"], 2)
    # a world model that is not the project's own: still judged by the world classifier (the bar's checks)
    assert ft.uses_world and not ft.builds_world and ev.builds_world
    from trust.concepts import build_prompt_sets
    from trust.stages.finetune import val_groups

    groups = val_groups(ft, root, build_prompt_sets(ft.concept, ft.prompts, world=True))
    assert [g.name for g in groups] == ["target", "shape:cross", "shape:square", "shape:triangle"] or \
        {g.name for g in groups} == {"target", "shape:cross", "shape:square", "shape:triangle"}
    assert ev.registry.gates.max_asr == shipped_params.registry.gates.max_target_rate
    assert ev.model.base == (root / "models" / "world").resolve() and ft.model.base == (tmp_path / "model").resolve()
    assert ev.registry.gates.max_target_rate == shipped_params.registry.gates.max_target_rate
    assert ft.finetune.adversarial.enabled and ft.finetune.seed == shipped_params.finetune.seed + 1
    assert not ft.finetune.adversarial.check  # the bar checks what broke through, not a fresh attack
    assert ft.finetune.max_seconds == shipped_params.reerase.max_seconds != shipped_params.finetune.max_seconds
    assert "a b" in ft.concept.literal_targets


def test_a_failed_floor_gate_reads_below_its_limit_in_the_repair_message():
    """min_base_target_rate fails *below* its limit: the message says '<', never '0.020 > 0.25'."""
    from trust.reerase.repair import Repair, Round, failure_message

    rd = Round(round=1, added=[], leak_rate=0.3, worst_drop=0.0,
               failed_gates={"min_base_target_rate": {"value": 0.02, "limit": 0.25},
                             "max_target_rate": {"value": 0.3, "limit": 0.1}})
    rep = Repair(rounds=[rd], chosen=rd)
    msg = failure_message("m/1", {"leak_rate": 0.5, "gate": 0.1}, rep, 1)
    assert "min_base_target_rate 0.020 < 0.25; max_target_rate 0.300 > 0.1" in msg
