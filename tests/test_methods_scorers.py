"""TRUST concept scorers: classifier and CLIP saliency through a differentiable DDIM sample,
and mask re-estimation with the configured scorer."""

import copy
import typing

import pytest
import torch

from tiny_models import save_tiny_clip
from trust.config import FinetuneParams, LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.saliency import cross_attention_params
from trust.methods.scorers import SCORERS, ClassifierScorer, build_scorer
from trust.methods.loop import Resources
from trust.methods.trust.method import TrustMethod
from trust.models.clip import load_clip

ROWS = [{"prompt": "a red circle", "anchor": "a plain background"},
        {"prompt": "a blue circle", "anchor": "a striped background"}]
LOC = dict(sample_steps=2, sample_batch=2, xi=1.0)


@pytest.fixture(scope="module")
def world_parts(shipped_world):
    parts = copy.copy(shipped_world)
    parts.unet = copy.deepcopy(shipped_world.unet)
    return parts, ForgetData.build(parts, ROWS, references=2, seed=0)


def _check_grads(grads, params):
    assert set(grads) == set(params)
    assert all(g.shape == params[k].shape for k, g in grads.items())
    assert any(float(g.abs().sum()) > 0 for g in grads.values())


def test_classifier_scorer_mask_is_cross_attention_rows(world_parts, shipped_classifier):
    parts, data = world_parts
    loc = LocalizeParams(scorer="classifier", **LOC)
    scorer = build_scorer(loc, parts, data, classifier=shipped_classifier, detect={"shape": "circle"})
    params = cross_attention_params(parts.unet, loc.modules)
    _check_grads(scorer.gradients(parts.unet, parts.unet, params, 0, 0, 0), params)
    assert not any(p.requires_grad for p in params.values())  # flags restored
    mask = scorer.mask(parts.unet, parts.unet, params, 0, 0, 0)
    assert all(m.dim() == 1 and m.shape[0] == params[k].shape[0] for k, m in mask.items())
    assert 0 < sum(int(m.sum()) for m in mask.values())


def test_classifier_scorer_needs_the_classifier(world_parts):
    parts, data = world_parts
    with pytest.raises(ValueError, match="world.classifier_dir"):
        build_scorer(LocalizeParams(scorer="classifier"), parts, data)


def test_clip_scorer_without_clip_names_the_key(world_parts):
    parts, data = world_parts
    with pytest.raises(ValueError, match=r"localize\.scorer=clip needs model\.clip_dir"):
        build_scorer(LocalizeParams(scorer="clip"), parts, data)


def test_unknown_scorer_names_the_key(world_parts):
    parts, data = world_parts
    assert SCORERS.names() == typing.get_args(LocalizeParams.model_fields["scorer"].annotation)
    with pytest.raises(ValueError, match=r"localize\.scorer: unknown scorer 'magic'; choose one of: denoise"):
        build_scorer(LocalizeParams.model_construct(scorer="magic"), parts, data)


def test_clip_scorer_with_a_tiny_local_clip(world_parts, world_tokenizer, tmp_path):
    parts, data = world_parts
    loc = LocalizeParams(scorer="clip", **LOC)
    scorer = build_scorer(loc, parts, data, clip=load_clip(save_tiny_clip(tmp_path / "clip", world_tokenizer)))
    params = cross_attention_params(parts.unet, loc.modules)
    _check_grads(scorer.gradients(parts.unet, parts.unet, params, 0, 0, 1), params)


def test_reestimation_uses_the_configured_scorer(world_parts, shipped_classifier):
    parts, data = world_parts
    parts = copy.copy(parts)
    parts.unet = copy.deepcopy(parts.unet)
    loc = LocalizeParams(scorer="classifier", **LOC)
    calls = []

    class Spy(ClassifierScorer):
        def gradients(self, *a):
            calls.append(a[3:])
            return super().gradients(*a)

    scorer = Spy(parts, data, loc, shipped_classifier, {"shape": "circle"})
    params = cross_attention_params(parts.unet, loc.modules)
    mask = scorer.mask(parts.unet, parts.unet, params, 0, 0, 0)
    method = TrustMethod(parts, data, FinetuneParams(preserve_weight=0.0).updated(batch_size=2, reestimate_every=1), loc, mask,
                         resources=Resources(scorer=scorer))
    method.step(0)
    info = method.step(1)
    assert calls == [(0, 0, 0), (0, 1, 2)]
    assert 0.0 <= info["jaccard"] <= 1.0 and info["reestimate_s"] > 0
