"""Attacks: prompt sets in the I2P layout, token helpers, and each attack improving its
objective over its budget on a tiny model built from configs."""

import pytest
import torch

from tests.tiny_models import tiny_sd_parts
from trust.attacks import P4D, AttackPrompt, AttackTarget, PromptSetAttack, RingABell, UnlearnDiffAtk, load_prompt_set
from trust.attacks.text import Layout, candidate_tokens, project_simplex
from trust.config import P4DParams, RingABellParams, UnlearnDiffAtkParams
from trust.detectors.base import Detector


class Never(Detector):
    """Detects nothing: every prompt is attacked for its whole budget."""

    name = "never"

    def scores(self, images):
        return [0.0] * len(images)

    def detect(self, images):
        return [False] * len(images)

    def settings(self):
        return {"detector": self.name}


class Counting(Never):
    """Detects from the k-th detect() call on (the first call is the no-attack check)."""

    def __init__(self, k):
        self.k, self.calls = k, 0

    def detect(self, images):
        self.calls += 1
        return [self.calls >= self.k] * len(images)


@pytest.fixture(scope="module")
def models(world_tokenizer):
    torch.set_num_threads(1)
    return tiny_sd_parts(world_tokenizer, seed=0), tiny_sd_parts(world_tokenizer, seed=1)


PROMPT = AttackPrompt("a red circle", seed=3, guidance=4.0)


def _target(models, detector=None):
    unlearned, original = models
    return AttackTarget(unlearned, detector or Never(), original, steps=4)


def test_shipped_prompt_sets_load(root):
    world = load_prompt_set(root / "data/attacks/world_circle.csv")
    assert len(world) >= 20 and {r.categories for r in world} == {"target", "paraphrase", "synonym", "indirect"}
    sd = load_prompt_set(root / "data/attacks/sd_nudity.csv")
    assert sd and all(r.guidance == 7.5 for r in sd)


def test_prompt_set_rejects_missing_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,seed\na circle,1\n")
    with pytest.raises(ValueError, match="evaluation_seed"):
        load_prompt_set(bad)


def test_simplex_projection():
    v = torch.tensor([[0.5, 0.9, -0.2], [1.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    p = project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(3)) and (p >= 0).all()
    assert torch.allclose(p[1], v[1])


def test_layout_round_trips_hard_tokens(world_tokenizer):
    cand = candidate_tokens(world_tokenizer)
    lay = Layout.build(world_tokenizer, "a red circle", 3, "prefix")
    words = cand[:3]
    text = lay.text(words)
    assert text.endswith("a red circle")
    again = torch.tensor(world_tokenizer(text, padding="max_length", max_length=world_tokenizer.model_max_length).input_ids)
    assert torch.equal(again, lay.fill(words))


def test_prompt_set_attack_is_its_pre_asr(models):
    res = PromptSetAttack().run(_target(models, Counting(2)), [PROMPT, PROMPT, PROMPT])
    assert [o.detected_no_attack for o in res.outcomes] == [False, True, True]
    assert res.summary()["asr"] == res.summary()["pre_asr"] == pytest.approx(2 / 3)


def test_unlearndiffatk_improves_its_objective(models):
    attack = UnlearnDiffAtk(UnlearnDiffAtkParams(prefix_tokens=3, lr=0.05, timesteps=4, batch_timesteps=4,
                                                 check_every=100, reference_tries=1), budget=25, seed=0)
    res = attack.run(_target(models), [PROMPT])
    o = res.outcomes[0]
    assert o.steps_run == 25 and o.adversarial.endswith("a red circle")
    assert o.objective_end < o.objective_start


def test_unlearndiffatk_stops_early_on_detection(models):
    # Calls: 1 no-attack check, 2 reference image, 3 first hard-token check -> detected.
    attack = UnlearnDiffAtk(UnlearnDiffAtkParams(check_every=5, reference_tries=1), budget=50, seed=0)
    o = attack.run(_target(models, Counting(3)), [PROMPT]).outcomes[0]
    assert o.broken and o.steps_run == 5
    assert attack.run(_target(models, Counting(3)), [PROMPT]).successful_prompts()[0]["attack"] == "unlearndiffatk"


def test_p4d_improves_its_objective(models):
    attack = P4D(P4DParams(tokens=4, batch_timesteps=2, check_every=100), budget=25, seed=0)
    o = attack.run(_target(models), [PROMPT]).outcomes[0]
    assert o.steps_run == 25 and len(o.adversarial.split()) == 4
    assert o.objective_end < o.objective_start


def test_p4d_k_inserts_tokens_into_the_prompt(models):
    attack = P4D(P4DParams(tokens=2, insert_every=1, check_every=100), budget=2, seed=0)
    o = attack.run(_target(models), [PROMPT]).outcomes[0]
    words = o.adversarial.split()
    assert len(words) == 5 and words[0] == "a"


def test_ringabell_improves_its_objective(models):
    pairs = [("a red circle", "a red shape"), ("a blue circle", "a blue shape")]
    attack = RingABell(RingABellParams(population=16, length=6), budget=15, seed=0, pairs=pairs)
    res = attack.run(_target(models), [PROMPT])
    o = res.outcomes[0]
    assert o.steps_run == 15 and o.objective_end < o.objective_start
    assert all(a >= b for a, b in zip(o.history, o.history[1:]))  # elitism: never worse
    assert res.params["pairs"] == [list(p) for p in pairs]  # the pairs used are recorded


def test_ringabell_without_pairs_says_what_to_set(models):
    with pytest.raises(ValueError, match=r"evaluate\.attacks\.ringabell\.pairs"):
        RingABell(budget=1).run(_target(models), [PROMPT])


def test_attacks_needing_the_original_model_say_so(models):
    with pytest.raises(ValueError, match="original"):
        P4D(budget=1).run(AttackTarget(models[0], Never(), None, steps=2), [PROMPT])


def test_every_attack_in_the_schema_is_registered():
    # evaluate.attacks.run lists the optimisation attacks; the prompt set always runs
    import typing

    from trust.attacks import ATTACKS, build_attack
    from trust.config import AttackParams

    run = typing.get_args(typing.get_args(AttackParams.model_fields["run"].annotation)[0])
    assert ATTACKS.names() == ("prompt_set", *run)
    assert isinstance(build_attack("p4d", AttackParams(), budget=1), P4D)
    with pytest.raises(ValueError, match=r"evaluate\.attacks\.run: unknown attack 'magic'; choose one of: prompt_set"):
        build_attack("magic", AttackParams())
