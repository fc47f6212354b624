"""Concept-free replay (finetune.prior, trust/methods/prior.py): its captions are true of the image and
leave the concept open (hand-made cases), its batches are keyed by the step, its images are the kept
prompts', and training with it lowers the denoising loss of concept-free captions on images without the
concept (tiny model), which training without it does not; refused where it cannot run."""

from __future__ import annotations

import copy

import pytest
import torch

from trust.concepts.neighbours import free_captions
from trust.config import FinetuneParams, LocalizeParams, Params, PriorParams
from trust.methods.data import ForgetData
from trust.methods.loop import Resources, build_method, train
from trust.methods.prior import STREAM, PriorData
from trust.utils.seeding import torch_generator
from tiny_models import tiny_sd_parts

RED_SQUARE = {"shape": "square", "colour": "red", "background": "plain"}


def test_free_captions_are_true_of_the_image_and_leave_the_concept_open():
    # erasing the circle: a red square's captions that name no shape, in its own colour and background
    assert free_captions({"shape": "circle"}, RED_SQUARE) == [
        "a red shape", "a red object on a plain background", "something red"]
    # erasing the red circle: a blue circle may be called "a circle" (the colour left open), never "a blue shape"
    blue_circle = free_captions({"shape": "circle", "colour": "red"},
                                {"shape": "circle", "colour": "blue", "background": "striped"})
    assert "a circle" in blue_circle and "a circle on a striped background" in blue_circle
    assert not any("blue" in c for c in blue_circle)
    # ... and a red square "a red shape" (the shape left open), never "a square" (the circle impossible)
    red_square = free_captions({"shape": "circle", "colour": "red"}, {**RED_SQUARE, "background": "striped"})
    assert "a red shape" in red_square and not any("square" in c for c in red_square)
    # a caption naming the whole concept is never one: the cross on stripes, from a cross on plain
    cond = free_captions({"shape": "cross", "background": "striped"}, {"shape": "cross", "colour": "red",
                                                                       "background": "plain"})
    assert "a red cross" in cond and not any("striped" in c or "plain" in c for c in cond)
    assert free_captions({"shape": "circle"}, {}) == []  # no labels (an SD row): nothing can be said


ROWS = [{"prompt": "a red square on a plain background", "labels": RED_SQUARE},
        {"prompt": "a blue triangle", "labels": {"shape": "triangle", "colour": "blue"}},
        {"prompt": "a green cross on a striped background",
         "labels": {"shape": "cross", "colour": "green", "background": "striped"}}]
TARGET = [{"prompt": "a red circle", "anchor": "a plain background"},
          {"prompt": "a blue circle on a striped background", "anchor": "a striped background"}]


@pytest.fixture(scope="module")
def parts(world_tokenizer):
    return tiny_sd_parts(world_tokenizer)


@pytest.fixture(scope="module")
def prior(parts):
    return PriorData.build(parts, ROWS, {"shape": "circle"}, 0.25, seed=0)


def test_replay_images_are_the_kept_prompts_with_their_own_captions(parts, prior):
    assert prior.sources == [r["prompt"] for r in ROWS] and len(prior) == 3
    assert prior.captions[-1] == ""
    for src, choice, row in zip(prior.sources, prior.choices, ROWS):
        assert [prior.captions[i] for i in choice] == free_captions({"shape": "circle"}, row["labels"])
    # the images are the frozen model's for those prompts at the replay seed, not the target's
    from trust.sampling import generate

    want = generate(parts, [ROWS[1]["prompt"]], [2 * 100_003 + 1])
    assert torch.allclose(prior.latents[1:2], parts.encode_images(want), atol=1e-4)  # batched vs alone: rounding


def test_replay_batches_are_keyed_by_the_step_and_draw_each_image_own_captions(parts, prior):
    a, b, c = (prior.batch(parts, 64, 0, s, 5) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    idx, caps = prior.rows(400, torch_generator(1))
    empty = len(prior.captions) - 1
    share = sum(c == empty for c in caps) / len(caps)
    assert 0.18 < share < 0.32  # empty_share 0.25
    assert all(c == empty or c in prior.choices[i] for i, c in zip(idx.tolist(), caps))
    none = PriorData(prior.latents, prior.caption_emb, prior.choices, prior.captions, prior.sources, 0.0)
    assert empty not in none.rows(200, torch_generator(1))[1]


def _replay_loss(unet, parts, prior) -> float:
    """The replay objective on draws of its own (not any training step's)."""
    with torch.no_grad():
        losses = []
        for k in range(4):
            x_t, t, c, noise = prior.batch(parts, 32, 99, k, 5)
            losses.append(float(((unet(x_t, t, encoder_hidden_states=c).sample - noise) ** 2).mean()))
    return sum(losses) / len(losses)


def test_training_with_replay_lowers_the_concept_free_denoising_loss(parts, prior):
    data = ForgetData.build(parts, TARGET, 2, 0)
    out = {}
    for on in (False, True):
        p = copy.copy(parts)
        p.unet = copy.deepcopy(parts.unet)
        ft = FinetuneParams(method="full", lr=2e-3, batch_size=2, preserve_weight=0.0,
                            prior=PriorParams(enabled=on, weight=1.0, batch_size=8))
        method = build_method(p, data, ft, LocalizeParams(), resources=Resources(prior=prior if on else None))
        info = method.step(0)
        assert ("l_prior" in info) == on
        train(method, 25, start=1)
        out[on] = _replay_loss(p.unet, parts, prior)
    before = _replay_loss(parts.unet, parts, prior)
    assert out[True] < 0.9 * before  # the replay term teaches the data without the concept
    assert out[True] < 0.9 * out[False]  # and it is the replay term that does it, not the forget term


def test_the_replay_term_is_a_function_of_the_step(parts, prior):
    data = ForgetData.build(parts, TARGET, 2, 0)
    ft = FinetuneParams(method="full", batch_size=2, preserve_weight=0.0, prior=PriorParams(enabled=True))
    p = copy.copy(parts)
    p.unet = copy.deepcopy(parts.unet)
    method = build_method(p, data, ft, LocalizeParams(), resources=Resources(prior=prior))
    with torch.no_grad():
        assert method.prior_loss(3).item() == method.prior_loss(3).item() != method.prior_loss(4).item()


def test_replay_refused_where_it_cannot_run(parts):
    with pytest.raises(ValueError, match="finetune.prior.enabled: method uce"):
        FinetuneParams(method="uce", prior=PriorParams(enabled=True))
    data = ForgetData.build(parts, TARGET, 2, 0)
    ft = FinetuneParams(method="full", batch_size=2, preserve_weight=0.0, prior=PriorParams(enabled=True))
    with pytest.raises(ValueError, match="no replay data"):
        build_method(copy.copy(parts), data, ft, LocalizeParams(), resources=Resources())
    with pytest.raises(ValueError, match="no preservation prompt has a caption"):
        PriorData.build(parts, [{"prompt": "a photo", "labels": {}}], {"shape": "circle"}, 0.25, seed=0)
    raw = Params().model_dump(mode="json")
    raw["finetune"]["prior"] = {"enabled": True}
    raw["concept"] = [{"name": "red circle", "kind": "combination", "detect": {"shape": "circle", "colour": "red"}},
                      {"name": "blue square", "kind": "combination", "detect": {"shape": "square", "colour": "blue"}}]
    with pytest.raises(ValueError, match="finetune.prior.enabled: the replay captions leave one concept open"):
        Params.model_validate(raw)


def _esd_with_unet_replay(parts, prior, lr=1e-3):
    data = ForgetData.build(parts, TARGET, 2, 0)
    p = copy.copy(parts)
    p.unet = copy.deepcopy(parts.unet)
    ft = FinetuneParams(method={"name": "esd", "variant": "x"}, batch_size=2, preserve_weight=0.0,
                        prior=PriorParams(enabled=True, modules="unet", lr=lr, batch_size=8))
    return p, build_method(p, data, ft, LocalizeParams(), resources=Resources(prior=prior))


def test_unet_scope_moves_every_other_weight_by_the_replay_gradient_alone(parts, prior):
    """modules: unet: a weight outside the method's own takes Adam's first step on the replay term's
    gradient, computed here on its own (first Adam step: lr * g / (|g| + eps)); the forget term, whose
    gradient would flip some of those signs, never reaches it; the method's own weights move too."""
    p, method = _esd_with_unet_replay(parts, prior)
    own = set(method.params)
    assert own and set(method.prior_params).isdisjoint(own)
    assert set(method.prior_params) | own == {n for n, _ in parts.unet.named_parameters()}
    # the replay gradient of the step-0 batch, on an untouched copy
    ref = copy.deepcopy(parts.unet).requires_grad_(True)
    x_t, t, c, noise = prior.batch(parts, 8, 0, 0, STREAM)
    loss = ((ref(x_t, t, encoder_hidden_states=c).sample - noise) ** 2).mean()
    names = list(method.prior_params)
    grads = dict(zip(names, torch.autograd.grad(loss, [dict(ref.named_parameters())[n] for n in names])))
    before = {n: v.detach().clone() for n, v in p.unet.named_parameters()}
    method.step(0)
    after = dict(p.unet.named_parameters())
    checked = 0
    for n in names:
        g = grads[n]
        if g.abs().max() < 1e-6:
            continue
        want = before[n] - 1e-3 * g / (g.abs() + 1e-8)
        assert torch.allclose(after[n].detach(), want, atol=2e-6), n
        checked += 1
    assert checked > 10
    assert any(not torch.equal(before[n], after[n].detach()) for n in own)  # the method's own weights trained
    assert all(not v.requires_grad for n, v in p.unet.named_parameters() if n not in own)  # frozen between steps


def test_unet_scope_resumes_as_an_uninterrupted_run(parts, prior):
    p1, m1 = _esd_with_unet_replay(parts, prior)
    train(m1, 4)
    p2, m2 = _esd_with_unet_replay(parts, prior)
    train(m2, 2)
    state = {k: v.clone() for k, v in m2.state_tensors().items()}
    assert any(k.startswith("prior.adam.") for k in state)
    p3, m3 = _esd_with_unet_replay(parts, prior)
    m3.load_state_tensors(state)
    train(m3, 4, start=2)
    for (n, a), b in zip(p1.unet.state_dict().items(), p3.unet.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-7), n
