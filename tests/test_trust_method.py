import copy
import time
from types import SimpleNamespace

import pytest
import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.loop import Resources, build_method
from trust.methods.saliency import cross_attention_params
from trust.methods.scorers import ClassifierScorer, ClipScorer
from trust.methods.trust.method import TrustMethod, denoise_saliency

ROWS = [{"prompt": "a red circle", "anchor": "a plain background"},
        {"prompt": "a blue circle", "anchor": "a striped background"}]


def _fresh(shipped_world, references: int):
    """A copy of the world whose UNet can be trained, and forget data for ROWS."""
    parts = copy.copy(shipped_world)
    parts.unet = copy.deepcopy(shipped_world.unet)
    return parts, ForgetData.build(parts, ROWS, references=references, seed=0)


def _setup(shipped_world, **ft):
    parts, data = _fresh(shipped_world, references=4)
    loc = LocalizeParams(batch_size=4, xi=1.0)
    params = cross_attention_params(parts.unet, loc.modules)
    mask = denoise_saliency(parts.unet, parts.unet, params, data, parts, loc, 0, 0)
    return parts, data, loc, mask, FinetuneParams(preserve_weight=0.0).updated(batch_size=4, **ft)


def test_mask_selects_only_cross_attention_rows(shipped_world):
    parts, data, loc, mask, ft = _setup(shipped_world)
    assert mask and all(".attn2.to_" in k for k in mask)
    assert all(m.dim() == 1 and m.shape[0] == parts.unet.get_parameter(k).shape[0] for k, m in mask.items())
    assert 0 < sum(int(m.sum()) for m in mask.values()) < sum(m.numel() for m in mask.values())


def test_step_changes_only_masked_rows(shipped_world):
    parts, data, loc, mask, ft = _setup(shipped_world, dynamic=False, steps=2)
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    method = TrustMethod(parts, data, ft, loc, mask)
    assert not any(p.requires_grad for n, p in parts.unet.named_parameters() if n not in mask)
    for s in range(2):
        method.step(s)
    after = parts.unet.state_dict()
    for k, v in before.items():
        if k in mask:
            changed_rows = (after[k] != v).any(dim=1)
            assert changed_rows.any()
            assert not (changed_rows & ~mask[k].bool()).any(), k  # only masked rows moved
        else:
            assert torch.equal(after[k], v), k  # frozen: bit-identical


def test_reestimation_moves_the_mask_and_rows_that_leave_it_stop_moving(shipped_world):
    """Re-estimation from the current weights really changes the mask (and the method trains under
    the new one); a row that leaves the mask gets no further update: its gradient is masked AND its
    Adam moments are cleared (momentum alone would keep it moving); rows that stay keep moving."""
    parts, data, loc, mask, ft = _setup(shipped_world, reestimate_every=3, lr=0.05)
    method = TrustMethod(parts, data, ft, loc, mask)
    for s in range(3):
        method.step(s)
    old = {k: v.clone().bool() for k, v in method.mask.items()}
    weights = {k: p.detach().clone() for k, p in method.params.items()}
    info = method.step(3)  # re-estimates first, then steps under the new mask
    new = {k: v.bool() for k, v in method.mask.items()}
    left = {k: old[k] & ~new[k] for k in old}
    stayed = {k: old[k] & new[k] for k in old}
    n_left = sum(int(v.sum()) for v in left.values())
    assert n_left > 0 and info["jaccard"] < 1.0  # the mask moved, and self.mask is the moved one
    for s in (4, 5):
        method.step(s)
    for k, p in method.params.items():
        w = p.detach()
        assert torch.equal(w[left[k]], weights[k][left[k]]), f"{k}: rows that left the mask moved"
    moved = sum(int((method.params[k].detach()[stayed[k]] != weights[k][stayed[k]]).any(dim=-1).sum()) for k in stayed)
    assert moved > 0


class _SpyScorer:
    """A concept scorer that records the randomness key of each mask it is asked for and hands out
    the masks it was given, in turn."""

    def __init__(self, masks):
        self.masks, self.keys = list(masks), []

    def mask(self, unet, frozen_unet, params, *key):
        self.keys.append((unet, frozen_unet, key))
        return self.masks.pop(0)


def test_localisation_and_reestimation_are_keyed_by_their_seed_and_step(shipped_world):
    """TRUST's own first mask comes from the start weights under localize.seed (key: seed, step 0,
    stream 0); a re-estimation at step s compares the current UNet with the frozen one under
    finetune.seed (key: seed, s, stream 2), so a resumed run re-draws the same noise. The overlap it
    reports is the Jaccard index of the two masks, worked out here by hand."""
    def masks(params):
        first = {k: torch.zeros(p.shape[0]) for k, p in params.items()}
        k0, k1 = list(first)[:2]
        first[k0][:4] = 1.0  # 4 rows marked
        second = {k: v.clone() for k, v in first.items()}
        second[k0][:2] = 0.0  # 2 of them leave, 3 new ones join: 2 rows in both of the 7 in either
        second[k1][:3] = 1.0
        return [first, second]

    method, spy, params = _spied(shipped_world, masks)
    first, second = masks(params)
    unet = method.parts.unet
    assert spy.keys[0] == (unet, unet, (11, 0, 0)) and all(torch.equal(method.mask[k], first[k]) for k in first)
    t0 = time.perf_counter()
    info = method.reestimate(3)
    wall = time.perf_counter() - t0
    assert spy.keys[1] == (unet, method.frozen, (5, 3, 2)) and method.frozen is not unet
    assert set(info) == {"jaccard", "reestimate_s"} and info["jaccard"] == pytest.approx(2 / 7)
    assert 0.0 <= info["reestimate_s"] <= wall
    assert all(torch.equal(method.mask[k], second[k]) for k in second)


def _rows(params, n: int) -> dict[str, torch.Tensor]:
    """A row mask marking the first n rows of each projection."""
    return {k: (torch.arange(p.shape[0]) < n).float() for k, p in params.items()}


def _spied(shipped_world, masks, **cfg):
    """TRUST (method knobs `cfg`) under a spy scorer that hands out `masks(params)` in turn: the
    localisation's mask, then one per re-estimation. Returns (method, spy, params)."""
    parts, data = _fresh(shipped_world, references=2)
    loc = LocalizeParams(batch_size=2, xi=1.0, seed=11)
    ft = FinetuneParams(preserve_weight=0.0).updated(batch_size=2, seed=5, method={"name": "trust", **cfg})
    params = cross_attention_params(parts.unet, loc.modules)
    spy = _SpyScorer(masks(params))
    return TrustMethod(parts, data, ft, loc, None, resources=Resources(scorer=spy)), spy, params


def test_each_step_reestimates_after_every_k_steps_and_reports_its_terms(shipped_world):
    """reestimate_every 1: a re-estimation before every step but the first (step 0 trains under the
    localisation's mask). Each step reports its loss, whose parts add up as beta weighs them, and the
    size of the mask it trained under (the spy's masks: the first n rows of each projection)."""
    method, spy, params = _spied(shipped_world, lambda p: [_rows(p, 3), _rows(p, 2), _rows(p, 1)],
                                 reestimate_every=1, beta=0.5)
    layers = len(params)
    infos = [method.step(s) for s in range(3)]
    assert [key for _, _, key in spy.keys] == [(11, 0, 0), (5, 1, 2), (5, 2, 2)]
    assert set(infos[0]) == {"loss", "l_prev", "l_reg", "mask_size"}
    assert set(infos[1]) == set(infos[2]) == {"loss", "l_prev", "l_reg", "mask_size", "jaccard", "reestimate_s"}
    assert [i["mask_size"] for i in infos] == [3 * layers, 2 * layers, 1 * layers]
    assert infos[1]["jaccard"] == pytest.approx(2 / 3)  # rows {0, 1} of {0, 1, 2}, in every projection
    for i in infos:
        assert i["l_reg"] > 0 and i["loss"] == pytest.approx(i["l_prev"] + 0.5 * i["l_reg"], rel=1e-6)


def test_a_static_mask_is_never_reestimated(shipped_world):
    method, spy, _ = _spied(shipped_world, lambda p: [_rows(p, 3)], reestimate_every=1, dynamic=False)
    for s in range(3):
        assert "jaccard" not in method.step(s)
    assert len(spy.keys) == 1  # the localisation only


def test_the_negative_guidance_target_trains_trust_too(shipped_world):
    anchor, _, _ = _spied(shipped_world, lambda p: [_rows(p, 3)])
    negative, _, _ = _spied(shipped_world, lambda p: [_rows(p, 3)], forget_target="negative_guidance", eta=1.0)
    a, n = anchor.step(0), negative.step(0)
    assert torch.isfinite(torch.tensor(n["l_prev"])) and n["l_prev"] != pytest.approx(a["l_prev"])


def test_the_classifier_scorer_gets_the_classifier_and_its_labels(shipped_world, shipped_classifier):
    parts, data, loc, mask, ft = _setup(shipped_world)
    detect = {"shape": "circle"}
    method = TrustMethod(parts, data, ft, loc.model_copy(update={"scorer": "classifier"}), mask,
                         resources=Resources(classifier=shipped_classifier, detect=detect))
    assert isinstance(method.scorer, ClassifierScorer)
    assert method.scorer.classifier is shipped_classifier and method.scorer.detect == detect


def test_build_method_hands_over_the_mask_the_preservation_data_and_the_resources(shipped_world):
    """build_method passes a given initial mask (TRUST trains under it, no localisation), builds the
    preservation data only through the callable it was given and only when the method needs it,
    and hands the method the caller's resources (here: the scorer it re-estimates with)."""
    parts, data, loc, mask, ft = _setup(shipped_world)
    spy = _SpyScorer([mask])
    built = []

    def keep():
        built.append(1)
        return data
    m = build_method(parts, data, ft.updated(preserve_weight=0.5), loc, keep=keep, initial_mask=mask,
                     resources=Resources(scorer=spy))
    assert m.keep is data and built == [1]
    assert spy.keys == [] and all(torch.equal(m.mask[k], mask[k]) for k in mask)  # no localisation: the given mask
    assert m.scorer is spy
    m = build_method(parts, data, ft, loc, keep=keep, initial_mask=mask)  # preserve_weight 0: keep is not built
    assert m.keep is None and built == [1] and m.resources == Resources()


def test_a_mask_of_other_projections_is_refused(shipped_world):
    parts, data, loc, mask, ft = _setup(shipped_world)
    k = next(iter(mask))
    with pytest.raises(ValueError, match="mask does not match the UNet's cross-attention projections"):
        TrustMethod(parts, data, ft, loc, {n: v for n, v in mask.items() if n != k})
    with pytest.raises(ValueError, match="cross-attention projections: \\['down.extra'\\]"):
        TrustMethod(parts, data, ft, loc, {**mask, "down.extra": torch.ones(1)})


def test_the_clip_scorer_gets_the_loaded_clip(shipped_world):
    parts, data, loc, mask, ft = _setup(shipped_world)
    clip = SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=object())  # what load_clip returns, minus CLIP
    method = TrustMethod(parts, data, ft, loc.model_copy(update={"scorer": "clip"}), mask,
                         resources=Resources(clip=clip))
    assert isinstance(method.scorer, ClipScorer)
    assert method.scorer.model is clip.model and method.scorer.tokenizer is clip.tokenizer
