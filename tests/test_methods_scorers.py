"""TRUST concept scorers: classifier and CLIP saliency through a differentiable DDIM sample,
and mask re-estimation with the configured scorer."""

import copy

import pytest
import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.saliency import cross_attention_params
from trust.methods.scorers import ClassifierScorer, build_scorer, load_clip
from trust.methods.loop import Resources
from trust.methods.trust.method import TrustMethod

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


def test_clip_scorer_without_weights_names_the_field(world_parts, tmp_path):
    parts, data = world_parts
    with pytest.raises(ValueError, match="localize.clip_path"):
        build_scorer(LocalizeParams(scorer="clip"), parts, data)
    with pytest.raises(FileNotFoundError, match="localize.clip_path"):
        load_clip(tmp_path / "nothing")


def test_clip_scorer_with_a_tiny_local_clip(world_parts, world_tokenizer, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(world_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=world_tokenizer.model_max_length,
                         bos_token_id=world_tokenizer.bos_token_id, eos_token_id=world_tokenizer.eos_token_id,
                         pad_token_id=world_tokenizer.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    world_tokenizer.save_pretrained(tmp_path / "clip")
    parts, data = world_parts
    loc = LocalizeParams(scorer="clip", clip_path=tmp_path / "clip", **LOC)
    scorer = build_scorer(loc, parts, data)
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
    method = TrustMethod(parts, data, FinetuneParams().updated(batch_size=2, reestimate_every=1), loc, mask,
                         resources=Resources(scorer=scorer))
    method.step(0)
    info = method.step(1)
    assert calls == [(0, 0, 0), (0, 1, 2)]
    assert 0.0 <= info["jaccard"] <= 1.0 and info["reestimate_s"] > 0
