"""ASR / pre-ASR arithmetic (docs/methods.md), preservation and Fréchet distance on hand-made cases."""

import math

import numpy as np
import torch
import pytest

from trust.attacks.base import AttackResult, PromptOutcome
from trust.metrics import asr, asr_summary, frechet_distance, mean_drop, pre_asr, preservation


def test_pre_asr_is_share_detected_without_attack():
    assert pre_asr([True, False, False, False]) == 0.25
    assert pre_asr([False] * 5) == 0.0
    assert math.isnan(pre_asr([]))


def test_asr_adds_broken_prompts_to_pre_detected():
    # 10 prompts: 2 detected with no attack, the attack breaks 3 of the other 8.
    pre = [True, True] + [False] * 8
    broken = [False, False, True, True, True] + [False] * 5
    assert asr(pre, broken) == pytest.approx(0.5)
    assert pre_asr(pre) == pytest.approx(0.2)


def test_asr_counts_a_pre_detected_prompt_once():
    assert asr([True, False], [True, False]) == 0.5
    assert asr([True, True], [True, True]) == 1.0
    s = asr_summary([True, False, False], [True, True, False])
    assert s == {"prompts": 3, "detected_no_attack": 1, "broken_by_attack": 1, "pre_asr": pytest.approx(1 / 3),
                 "asr": pytest.approx(2 / 3)}


def test_asr_needs_one_result_of_each_per_prompt():
    with pytest.raises(ValueError, match="one of each per prompt"):
        asr([True, False], [True])


def test_attack_result_summary_and_successful_prompts():
    outcomes = [PromptOutcome("p0", [1], 4.0, True),
                PromptOutcome("p1", [2], 4.0, False, broken=True, adversarial="x y p1"),
                PromptOutcome("p2", [3], 4.0, False, adversarial="z p2"),
                PromptOutcome("p3", [4], 4.0, False)]
    res = AttackResult("p4d", {}, {}, outcomes, 0.0)
    assert res.summary()["pre_asr"] == 0.25 and res.summary()["asr"] == 0.5
    assert res.successful_prompts() == [{"prompt": "p0", "attack": "none", "seeds": [1]},
                                        {"prompt": "x y p1", "attack": "p4d", "seeds": [2]}]
    assert res.successful_prompts(include_no_attack=False) == [{"prompt": "x y p1", "attack": "p4d", "seeds": [2]}]


def test_preservation_drop_per_kept_concept():
    keep = preservation({"shape:square": [True] * 4, "shape:cross": [True, True, False, False]},
                        {"shape:square": [True, True, True, False], "shape:cross": [True, True, False, False]})
    assert keep["shape:square"] == {"base": 1.0, "tuned": 0.75, "drop": 0.25, "images": 4}
    assert keep["shape:cross"]["drop"] == 0.0
    assert mean_drop(keep) == pytest.approx(0.125)


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by (1, 2, 0): distance = |shift|^2 = 5.
    assert frechet_distance(a, a + np.array([1.0, 2.0, 0.0])) == pytest.approx(5.0, abs=1e-6)
    # Isotropic Gaussians N(0, 1) vs N(0, 4) in 1-D: (1 - 2)^2 = 1.
    b = np.array([[-1.0], [1.0]] * 50)
    assert frechet_distance(b, 2 * b) == pytest.approx(1.0 * np.var(b, ddof=1), rel=1e-6)


class _Scripted(torch.nn.Module):
    """A classifier whose labels are given per image in order (independent of the pixels), so the
    detection rate is known by hand; it records the images it was shown."""

    def __init__(self, labels: dict[str, list[str]]):
        super().__init__()
        self.labels, self.seen = labels, []
        self.w = torch.nn.Parameter(torch.zeros(1))  # detection_rate moves images to its device

    def predict(self, images):
        self.seen.append(images)
        return self.labels


def test_detection_rate_counts_images_whose_every_wanted_head_matches(world_tokenizer):
    from tiny_models import tiny_sd_parts
    from trust.metrics.detection import detection_rate
    from trust.sampling import generate

    parts = tiny_sd_parts(world_tokenizer)
    # 4 images; shape must be circle AND colour red: images 0 and 3 (image 1 has the wrong colour)
    clf = _Scripted({"shape": ["circle", "circle", "square", "circle"], "colour": ["red", "blue", "red", "red"]})
    prompts, seeds = ["a red circle", "a red square", "a red circle", "a blue circle"], [0, 1, 2, 3]
    rate = detection_rate(parts, clf, prompts, seeds, {"shape": "circle", "colour": "red"}, steps=2, guidance=2.0)
    assert rate == 0.5 and len(clf.seen) == 1
    # it judged the images of exactly these prompts, seeds and sampling settings
    assert torch.equal(clf.seen[0], generate(parts, prompts, seeds, steps=2, guidance=2.0))
    assert detection_rate(parts, clf, ["a"] * 4, [0, 1, 2, 3], {"shape": "circle"}, steps=1, guidance=1.0) == 0.75
    # the images go to the classifier's device (a classifier on another device than the model)
    clf.w = torch.nn.Parameter(torch.zeros(1, device="meta"))
    detection_rate(parts, clf, ["a"] * 4, [0, 1, 2, 3], {"shape": "circle"}, steps=1, guidance=1.0)
    assert clf.seen[-1].device == torch.device("meta")
