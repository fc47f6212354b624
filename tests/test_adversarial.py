"""Adversarial erasure (trust/methods/adversarial.py) on tiny models: the inner attack brings the
concept back on weights that lost it, its conditions enter the forget batch the trained model sees,
a resumed adversarial run repeats an uninterrupted one, and the bar reads the attacked rate."""

from __future__ import annotations

import copy

import pytest
import torch

from trust.config import AdversarialParams, FinetuneParams, LocalizeParams, ToBarParams
from trust.methods.adversarial import InnerAttack
from trust.methods.data import ForgetData
from trust.methods.loop import STOP, build_method, train
from trust.methods.stopping import BarCheck, ValGroup
from trust.utils.seeding import torch_generator
from tiny_models import tiny_sd_parts

ROWS = [{"prompt": "a red circle", "anchor": "a plain background"},
        {"prompt": "a blue circle on a striped background", "anchor": "a striped background"}]


@pytest.fixture(scope="module")
def setup(world_tokenizer):
    parts = tiny_sd_parts(world_tokenizer)
    data = ForgetData.build(parts, ROWS, 2, 0)
    return parts, data


def _gap(unet, frozen, parts, x0, c_in, c_clean, key) -> float:
    """How far `unet` under c_in is from the ORIGINAL model's prediction for the clean prompt, on
    noise and timesteps of their own (`key`), not the attack's: the concept, as the base draws it."""
    g = torch_generator(*key)
    x0 = x0.repeat_interleave(8, 0)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(50, 950, (len(x0),), generator=g)
    x_t = parts.scheduler.add_noise(x0, noise, t)
    with torch.no_grad():
        want = frozen(x_t, t, encoder_hidden_states=c_clean.repeat_interleave(8, 0)).sample
        got = unet(x_t, t, encoder_hidden_states=c_in.repeat_interleave(8, 0)).sample
    return float(((got - want) ** 2).mean())


@pytest.mark.parametrize("space", ["embedding", "tokens"])
def test_the_inner_attack_brings_the_concept_back_on_weights_that_lost_it(setup, space):
    parts, data = setup
    frozen = parts.unet
    # "Erased" weights: the cross-attention keys and values moved away (they read the prompt)
    erased = copy.deepcopy(parts.unet)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in erased.named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                p.add_(0.5 * torch.randn(p.shape, generator=g) * p.std())
    cfg = AdversarialParams(enabled=True, steps=25, tokens=3, lr=0.1 if space == "tokens" else 0.05, timesteps=4,
                            space=space)
    attack = InnerAttack(parts, frozen, cfg)
    found = attack.run(erased, data.latents, data.prompts, data.target_emb, 0, 1)
    clean = _gap(erased, frozen, parts, data.latents, data.target_emb, data.target_emb, (11,))
    attacked = _gap(erased, frozen, parts, data.latents, found.cond, data.target_emb, (11,))
    assert found.objective_end < found.objective_start
    assert attacked < 0.9 * clean, (attacked, clean)  # measured on noise the attack never saw
    assert found.cond.shape == data.target_emb.shape
    if space == "tokens":  # a prompt a user could type: the condition is exactly that text's
        # layout both: the first prompt keeps its words after a prefix, the second is adversarial tokens alone
        assert found.texts[0].endswith(data.prompts[0]) and len(found.texts[0].split()) == 3 + 3
        assert len(found.texts[1].split()) == 3 and data.prompts[1] not in found.texts[1]
        assert torch.allclose(found.cond, parts.encode_text(found.texts), atol=1e-5)


def _ft(method="trust", **adv):
    m = {"name": "salun", "retain_weight": 0.0} if method == "salun" else method
    return FinetuneParams(method=m, steps=6, lr=1e-3, batch_size=4, preserve_weight=0.0,
                          adversarial=AdversarialParams(enabled=True, every=2, steps=2, prompts=2, pool_size=3,
                                                        share=0.5, timesteps=4, **adv))  # attack batch 8; forget batch 4 + 2


@pytest.mark.parametrize("method", ["trust", "esd", "full", "salun"])
def test_adversarial_conditions_enter_the_forget_batch_the_trained_model_sees(setup, method):
    parts, data = setup
    m = build_method(copy.deepcopy(parts), data, _ft(method), LocalizeParams(batch_size=2))
    seen = []
    hook = m.parts.unet.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["encoder_hidden_states"].detach().clone()) if torch.is_grad_enabled()
        and any(p.requires_grad for p in m.params.values()) else None, with_kwargs=True)
    info = m.step(0)  # step 0: the inner attack runs, then the batch draws from its pool
    hook.remove()
    assert "adv_s" in info and info["adv_pool"] == 2.0
    assert all(p.grad is None or p.grad.abs().sum() > 0 for p in m.params.values())
    pool = m.adversary.pool.cond
    clean = data.target_emb

    def is_in(row, bank):
        return any(torch.allclose(row, b, atol=1e-6) for b in bank)
    trained_views = [c for c in seen if c.shape[0] == 6]
    assert trained_views, "the trained model never ran on a forget batch"
    rows = [r for c in trained_views for r in c]
    # 4 clean rows, and share 0.5 x 4 = 2 more rows with the pool's adversarial conditions
    assert all(sum(is_in(r, pool) for r in c) == 2 and sum(is_in(r, clean) for r in c) == 4 for c in trained_views)
    assert not any(is_in(p, clean) for p in pool)  # the pool holds conditions no clean prompt has


def test_no_adversarial_option_no_adversarial_rows(setup):
    parts, data = setup
    ft = FinetuneParams(method="trust", steps=2, lr=1e-3, batch_size=4, preserve_weight=0.0)
    m = build_method(copy.deepcopy(parts), data, ft, LocalizeParams(batch_size=2))
    x_t, t, c_in, c_target, _ = m.forget_batch(0, {})
    assert m.adversary is None and torch.equal(c_in, c_target)


@pytest.mark.parametrize("method", ["trust", "esd"])
def test_a_resumed_adversarial_run_equals_an_uninterrupted_one(setup, method):
    parts, data = setup
    loc = LocalizeParams(batch_size=2)
    ft = _ft(method)
    straight = build_method(copy.deepcopy(parts), data, ft, loc)
    train(straight, 6)
    first = build_method(copy.deepcopy(parts), data, ft, loc)
    train(first, 3)  # the pool holds the attacks of steps 0 and 2 here
    state = {k: v.clone() for k, v in first.state_tensors().items()}
    assert "adversarial.cond" in state
    resumed = build_method(copy.deepcopy(parts), data, ft, loc)
    resumed.load_state_tensors(state)
    train(resumed, 6, start=3)
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k]), k


def test_the_bar_stops_only_when_the_attacked_validation_rate_is_within_it(setup):
    parts, data = setup
    ft = _ft("full")
    m = build_method(copy.deepcopy(parts), data, ft, LocalizeParams(batch_size=2))
    calls = iter([1.0, 0.0, 0.5, 0.0, 0.0])  # base; check 1: clean 0.0, attacked 0.5; check 2: both 0.0

    def hits(images):
        r = next(calls)
        k = round(r * images.shape[0])
        return [True] * k + [False] * (images.shape[0] - k)
    cfg = ToBarParams(samples_per_prompt=4, max_prompts=1, sample_steps=2, confirm_steps=None)
    bar = BarCheck(m, [ValGroup("target", ["a red circle"], hits, kept=False)], cfg, 0.10, 0.10, attacked=True)
    assert bar(1, None) is None
    assert bar.state.checks[-1]["val_target_clean"] == 0.0 and bar.state.checks[-1]["val_target_attacked"] == 0.5
    assert bar(2, None) is STOP
    # check: false: the attacked rate is measured and logged, the stop reads the clean rate only
    calls = iter([1.0, 0.0, 0.5])
    bar = BarCheck(m, [ValGroup("target", ["a red circle"], hits, kept=False)], cfg, 0.10, 0.10, attacked=True,
                   attacked_stops=False)
    assert bar(1, None) is STOP and bar.state.checks[-1]["val_target_attacked"] == 0.5


def test_adversarial_option_refused_for_a_method_without_a_forget_batch():
    with pytest.raises(ValueError, match="finetune.adversarial.enabled"):
        FinetuneParams(method="ant", adversarial=AdversarialParams(enabled=True))


def test_the_inner_attack_leaves_the_kept_concepts_words_out(setup):
    parts, _ = setup
    tok = parts.tokenizer
    kept = ("square", "quadrilateral")
    on = InnerAttack(parts, parts.unet, AdversarialParams(enabled=True), kept)
    off = InnerAttack(parts, parts.unet, AdversarialParams(enabled=True, protect_kept_words=False), kept)
    words = lambda a: {t.removesuffix("</w>") for t in tok.convert_ids_to_tokens(a.cand.tolist())}  # noqa: E731
    assert "square" in words(off) and "square" not in words(on)
    assert "circle" in words(on)  # the target's own words stay
    pieces = {t.removesuffix("</w>") for i in tok("quadrilateral", add_special_tokens=False).input_ids
              for t in [tok.convert_ids_to_tokens(i)]}
    assert not (pieces & words(on)) and words(off) - words(on) >= {"square"}



def test_kept_words_are_the_kept_labels_words_the_target_does_not_use():
    from trust.concepts.words import kept_words

    single = kept_words({"shape": "circle"}, [{"shape": "square"}, {"shape": "triangle"}])
    assert {"square", "quadrilateral", "triangle", "three", "sided"} <= set(single)
    assert "shape" not in single and "circle" not in single  # "three sided shape" vs the circle's "round shape"
    pair = kept_words({"shape": "circle", "colour": "red"}, [{"shape": "square", "colour": "red"},
                                                            {"shape": "circle", "colour": "blue"}])
    assert "square" in pair and "blue" in pair and "red" not in pair and "circle" not in pair
