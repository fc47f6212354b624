"""model.dtype (trust/models/precision.py): forwards in half precision under autocast, the trained
weights kept in float32, frozen copies stored in the dtype, float16's loss scaled; on a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from trust.config import FinetuneParams, LocalizeParams, Params
from trust.methods.data import ForgetData
from trust.methods.loop import build_method, train
from trust.models.precision import LossScale
from trust.sampling import generate

ROWS = [{"prompt": "a red circle", "anchor": "a plain background"},
        {"prompt": "a blue circle", "anchor": "a striped background"}]


@pytest.fixture(scope="module")
def tiny(world_tokenizer):
    from tiny_models import tiny_sd_parts

    return tiny_sd_parts(world_tokenizer)


def _in(parts, dtype):
    p = copy.copy(parts)
    p.unet, p.compute_dtype = copy.deepcopy(parts.unet), dtype
    return p


def _trained(parts, dtype, steps=2, method="trust"):
    p = _in(parts, dtype)
    data = ForgetData.build(p, ROWS, references=4, seed=0)
    ft = FinetuneParams(method=method, preserve_weight=0.0).updated(batch_size=2)
    m = build_method(p, data, ft, LocalizeParams(batch_size=4, xi=1.0))
    before = {k: v.detach().clone() for k, v in m.params.items()}
    train(m, steps)
    return m, {k: m.params[k].detach() - before[k] for k in before}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_training_keeps_float32_masters_and_moves_them_like_float32(tiny, dtype):
    m, moved = _trained(tiny, dtype)
    assert all(p.dtype == torch.float32 for p in m.params.values())  # the masters
    assert all(p.dtype == dtype for p in m.frozen.parameters())  # the frozen targets, stored in the dtype
    assert all(p.dtype == torch.float32 for p in m.parts.unet.parameters())  # the model's own weights
    a = torch.cat([v.flatten() for v in moved.values()])
    _, want = _trained(tiny, torch.float32)
    b = torch.cat([v.flatten() for v in want.values()])
    assert a.abs().sum() > 0 and torch.isfinite(a).all()
    # TRUST's mask comes from saliency computed in the dtype: nearly the float32 one (a few rows at the threshold)
    assert ((a != 0) & (b != 0)).sum() >= 0.8 * (b != 0).sum()
    # full fine-tuning (every entry, no mask): Adam's first steps are ~lr x sign(g), and the half-precision
    # run's go the float32 run's way
    _, half = _trained(tiny, dtype, method="full")
    _, full = _trained(tiny, torch.float32, method="full")
    a, b = torch.cat([v.flatten() for v in half.values()]), torch.cat([v.flatten() for v in full.values()])
    assert (torch.sign(a) == torch.sign(b)).float().mean() > 0.9


def test_half_precision_images_are_float32_and_close_to_float32_ones(tiny):
    prompts, seeds = ["a red circle", "a blue square"], [0, 1]
    full = generate(tiny, prompts, seeds, steps=3, guidance=4.0)
    half = generate(_in(tiny, torch.bfloat16), prompts, seeds, steps=3, guidance=4.0)
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert 0 < (half - full).abs().mean() < 0.05  # bfloat16 did compute (not identical), and closely


def test_float16_loss_scaling_skips_an_overflowing_step_and_halves_the_scale():
    w = torch.nn.Parameter(torch.ones(1, 4))
    opt = torch.optim.SGD([w], lr=0.1)
    scale = LossScale(torch.float16, "cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        y = torch.nn.functional.linear(torch.ones(1, 4), w)  # float16
    # scaled by GradScaler's initial 65536, the gradient 10 x 65536 is past float16's largest value (65504)
    scale.backward_and_step((y.float() * 10).sum(), opt)
    assert torch.equal(w.detach(), torch.ones(1, 4))  # skipped: no inf/nan reached the weights
    assert float(scale.state()["amp.scale"]) == 65536 / 2
    with torch.autocast("cpu", dtype=torch.float16):
        y = torch.nn.functional.linear(torch.ones(1, 4), w)
    opt.zero_grad()
    scale.backward_and_step((y.float() * 0.01).sum(), opt)  # 0.01 x 32768 fits: a real step of the unscaled grad
    assert torch.allclose(w.detach(), torch.full((1, 4), 1 - 0.1 * 0.01), atol=1e-6)


def test_a_resumed_float16_run_repeats_an_uninterrupted_one(tiny):
    whole, _ = _trained(tiny, torch.float16, steps=2)
    first, _ = _trained(tiny, torch.float16, steps=1)
    state = {k: v.clone() for k, v in first.state_tensors().items()}
    assert "amp.scale" in state
    p = _in(tiny, torch.float16)
    data = ForgetData.build(p, ROWS, references=4, seed=0)
    resumed = build_method(p, data, FinetuneParams(method="trust", preserve_weight=0.0).updated(batch_size=2),
                           LocalizeParams(batch_size=4, xi=1.0))
    resumed.load_state_tensors(state)
    train(resumed, 2, start=1)
    for k in whole.params:
        assert torch.equal(resumed.params[k], whole.params[k]), k


def test_model_dtype_is_checked_by_name():
    assert Params.model_validate({"model": {"dtype": "bfloat16"}}).model.dtype == "bfloat16"
    with pytest.raises(ValueError, match=r"model\.dtype"):
        Params.model_validate({"model": {"dtype": "half"}})


def test_adversarial_training_with_the_bar_runs_in_bfloat16(tiny):
    """The inner attack (every step here) and the bar's check with its fresh attack run against a
    frozen copy stored in bfloat16: a step and a check complete, the masters stay float32."""
    from trust.config import AdversarialParams, ToBarParams
    from trust.methods.stopping import BarCheck, ValGroup

    p = _in(tiny, torch.bfloat16)
    data = ForgetData.build(p, ROWS, references=4, seed=0)
    ft = FinetuneParams(method="full", preserve_weight=0.0, lr=1e-4,
                        adversarial=AdversarialParams(enabled=True, every=1, steps=2, prompts=1, pool_size=2,
                                                      tokens=2, timesteps=2)).updated(batch_size=2)
    m = build_method(p, data, ft, LocalizeParams(batch_size=2))
    cfg = ToBarParams(samples_per_prompt=2, max_prompts=1, sample_steps=2, confirm_steps=None)
    never = ValGroup("target", ["a red circle"], lambda images: [True] * images.shape[0], kept=False)
    bar = BarCheck(m, [never], cfg, 0.10, 0.10, attacked=True)  # built as the finetune stage builds it
    result = train(m, 2, check=bar, check_every=1)
    assert result.steps_run == 2 and len(bar.state.checks) == 2 and "val_target_attacked" in bar.state.checks[-1]
    assert all(q.dtype == torch.float32 and torch.isfinite(q).all() for q in m.params.values())


def test_a_stored_copy_is_cast_tensor_by_tensor_and_independent(tiny):
    from trust.models.precision import stored_copy

    unet = tiny.unet
    half = stored_copy(unet, torch.bfloat16)
    src = dict(unet.named_parameters())
    got = dict(half.named_parameters())
    assert got.keys() == src.keys()
    for k, p in got.items():
        assert p.dtype == torch.bfloat16 and torch.equal(p, src[k].detach().to(torch.bfloat16)), k
        assert p.data_ptr() != src[k].data_ptr()
    first = next(iter(src.values())).detach().clone()
    with torch.no_grad():
        next(iter(half.parameters())).add_(1.0)  # a copy: the original does not move
    assert torch.equal(next(iter(unet.parameters())), first)
    assert all(b.dtype == torch.bfloat16 for b in half.buffers() if b.is_floating_point())
    same = stored_copy(unet, torch.float32)
    assert all(p.dtype == torch.float32 for p in same.parameters())
