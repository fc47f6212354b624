"""Cheaper frozen targets (trust/methods/target_pool.py): a pool of rows whose frozen targets were paid
for once. Checked by hand on counted rows, and on the world's TRUST: same first steps, fewer frozen
rows, every pooled target the frozen model's own for its row, exact resume."""

import copy

import pytest
import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.saliency import cross_attention_params
from trust.methods.target_pool import TargetPool
from trust.methods.trust.method import TrustMethod, denoise_saliency


def test_the_pool_fills_with_fresh_rows_then_mixes_fresh_and_kept_rows_and_replaces_the_oldest():
    made = []

    def compute(n):  # rows numbered in the order they were made; "target" = 10 x the number
        ids = torch.arange(len(made), len(made) + n)
        made.extend(ids.tolist())
        return ids, ids * 10

    pool = TargetPool("t", size=4, fresh=0.5, seed=0)
    a = pool.rows(0, 2, compute)
    b = pool.rows(1, 2, compute)
    assert a[0].tolist() == [0, 1] and b[0].tolist() == [2, 3]  # filling: every row fresh
    c = pool.rows(2, 2, compute)
    assert c[0][0].item() == 4 and c[0][1].item() in (0, 1, 2, 3)  # one fresh (first), one kept, not the new one
    assert torch.equal(c[1], c[0] * 10)  # each kept row travels with its own target
    assert sorted(pool.buf[0].tolist()) == [1, 2, 3, 4]  # row 4 replaced the oldest (0)
    for s in range(3, 40):
        ids, tgt = pool.rows(s, 2, compute)
        assert torch.equal(tgt, ids * 10) and ids[0].item() == len(made) - 1
        assert ids[1].item() < ids[0].item() and ids[1].item() >= len(made) - 1 - 4  # from the 4 newest before it
    assert len(made) == 4 + 38  # after the fill, one computed row per step of two


def test_a_pool_of_size_zero_is_every_row_fresh():
    pool = TargetPool("t", size=0, fresh=0.25, seed=0)
    rows = pool.rows(3, 5, lambda n: (torch.arange(n),))
    assert rows[0].tolist() == [0, 1, 2, 3, 4] and pool.state() == {}
    with pytest.raises(ValueError, match="fresh"):
        TargetPool("t", size=4, fresh=0.0, seed=0)


ROWS = [{"prompt": "a red circle", "anchor": "a plain background"},
        {"prompt": "a blue circle", "anchor": "a striped background"}]
KEEP = [{"prompt": "a red square", "anchor": None}, {"prompt": "a blue triangle", "anchor": None}]


@pytest.fixture(scope="module")
def world_data(shipped_world):
    """The forget and preservation data and the starting mask, made once (sampling them is the slow part)."""
    data = ForgetData.build(shipped_world, ROWS, references=4, seed=0)
    keep = ForgetData.build(shipped_world, KEEP, references=4, seed=1)
    loc = LocalizeParams(batch_size=4, xi=1.0)
    parts = copy.copy(shipped_world)
    parts.unet = copy.deepcopy(shipped_world.unet)  # saliency takes gradients: never on the shared model
    unet = parts.unet
    mask = denoise_saliency(unet, unet, cross_attention_params(unet, loc.modules), data, parts, loc, 0, 0)
    return data, keep, loc, mask


def _method(shipped_world, world_data, **knobs):
    parts = copy.copy(shipped_world)
    parts.unet = copy.deepcopy(shipped_world.unet)
    data, keep, loc, mask = world_data
    ft = FinetuneParams(preserve_weight=1.0).updated(batch_size=4, dynamic=False, lr=0.02, **knobs)
    m = TrustMethod(parts, data, ft, loc, mask, keep=keep)
    rows = []
    forward = m.frozen.forward

    def counted(x, *a, **k):
        rows.append(x.shape[0])
        return forward(x, *a, **k)

    m.frozen.forward = counted
    return m, rows


def _weights(m):
    return {k: p.detach().clone() for k, p in m.params.items()}


def test_trust_with_a_pool_runs_the_frozen_model_on_fewer_rows_and_its_first_steps_are_unchanged(shipped_world, world_data):
    plain, plain_rows = _method(shipped_world, world_data)
    pooled, pooled_rows = _method(shipped_world, world_data, target_pool=8, target_fresh=0.25)
    for s in range(2):  # 8 rows / batch 4: two filling steps, the same draws as without a pool
        plain.step(s), pooled.step(s)
    assert all(torch.equal(a, b) for a, b in zip(_weights(plain).values(), _weights(pooled).values()))
    plain_rows.clear(), pooled_rows.clear()
    for s in range(2, 6):
        plain.step(s), pooled.step(s)
    # per step: the forget target's two predictions (anchor, concept) and the preservation target
    assert sum(plain_rows) == 4 * (2 * 4 + 4)
    assert sum(pooled_rows) == 4 * (2 * 1 + 1)  # one fresh row of four
    # every pooled target is the frozen model's own for its (x_t, t, condition): inputs and targets never misalign
    x_t, t, idx, target = pooled.forget_pool.buf
    with torch.no_grad():
        want = pooled.forget_target(x_t, t, pooled.data.target_emb[idx], pooled.data.anchor_emb[idx])
        k_t, k_tt, k_idx, k_target = pooled.keep_pool.buf
        k_want = pooled.frozen(k_t, k_tt, encoder_hidden_states=pooled.keep.target_emb[k_idx]).sample
    assert torch.allclose(target, want, atol=1e-5) and torch.allclose(k_target, k_want, atol=1e-5)
    assert not torch.equal(target, pooled.forget_target(x_t, t, pooled.data.anchor_emb[idx], pooled.data.anchor_emb[idx]))


def test_a_resumed_run_with_a_pool_repeats_an_uninterrupted_one(shipped_world, world_data):
    straight, _ = _method(shipped_world, world_data, target_pool=8)
    for s in range(6):
        straight.step(s)
    first, _ = _method(shipped_world, world_data, target_pool=8)
    for s in range(3):
        first.step(s)
    state = {k: v.clone() for k, v in first.state_tensors().items()}
    assert "pool.forget.count" in state and "pool.keep.0" in state
    resumed, _ = _method(shipped_world, world_data, target_pool=8)
    resumed.load_state_tensors(state)
    for s in range(3, 6):
        resumed.step(s)
    assert all(torch.equal(a, b) for a, b in zip(_weights(straight).values(), _weights(resumed).values()))
