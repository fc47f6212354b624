"""The one training loop (trust/methods/loop.py) and the per-method finetune config it reads."""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.loop import STOP, build_method, train
from trust.methods.saliency import cross_attention_params
from trust.methods.trust.method import denoise_saliency

ROWS = [{"prompt": "a red circle", "anchor": "a plain background"},
        {"prompt": "a blue circle", "anchor": "a striped background"}]


@pytest.fixture(scope="module")
def tiny(world_tokenizer):
    from tiny_models import tiny_sd_parts

    return tiny_sd_parts(world_tokenizer)


def _fresh(parts):
    p = copy.copy(parts)
    p.unet = copy.deepcopy(parts.unet)
    return p


def test_trust_builds_the_localize_mask_itself(tiny):
    """Without a mask handed in, TRUST localises from its start weights exactly as the localize stage does."""
    p = _fresh(tiny)
    data = ForgetData.build(p, ROWS, references=4, seed=0)
    loc = LocalizeParams(batch_size=4, xi=1.0)
    want = denoise_saliency(p.unet, p.unet, cross_attention_params(p.unet, loc.modules), data, p, loc, loc.seed, 0, 0)
    method = build_method(p, data, FinetuneParams(preserve_weight=0.0).updated(batch_size=2), loc)
    assert set(method.mask) == set(want) and want
    assert all(torch.equal(method.mask[k], want[k]) for k in want)


def test_check_runs_every_k_steps_and_at_the_end_and_can_stop(tiny):
    p = _fresh(tiny)
    data = ForgetData.build(p, ROWS, references=4, seed=0)
    ft = FinetuneParams(preserve_weight=0.0).updated(method="full", batch_size=2, lr=1e-4)
    seen = []
    result = train(build_method(p, data, ft, LocalizeParams()), 5, check=lambda done, so_far: seen.append(done),
                   check_every=2)
    assert seen == [2, 4, 5] and result.steps_run == 5 and not result.stopped
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5] and len(result.step_s) == 5
    stop_at = []
    result = train(build_method(_fresh(tiny), data, ft, LocalizeParams()), 9,
                   check=lambda done, so_far: stop_at.append(done) or (STOP if done == 3 else None), check_every=3)
    assert stop_at == [3] and result.steps_run == 3 and result.stopped


def test_the_times_it_records_are_the_times_spent(tiny):
    """train_s is the steps' own time, materialise_s the weights' materialisation (a planted 50 ms
    sleep each time), wall_s the whole call; none of them is another's or a clock reading."""
    import time

    data = ForgetData.build(tiny, ROWS, references=4, seed=0)
    ft = FinetuneParams(preserve_weight=0.0).updated(method="full", batch_size=2, lr=1e-4)
    for check in (None, lambda done, so_far: None):
        method = build_method(_fresh(tiny), data, ft, LocalizeParams())
        real = method.materialise if check else method.finish

        def slow(*a, _real=real):
            time.sleep(0.05)
            return _real(*a)

        setattr(method, "materialise" if check else "finish", slow)
        t0 = time.perf_counter()
        r = train(method, 3, check=check, check_every=3)
        elapsed = time.perf_counter() - t0
        assert 0.05 <= r.materialise_s < r.wall_s <= elapsed
        assert r.train_s == pytest.approx(sum(r.step_s)) and 0 < r.train_s < r.wall_s - 0.05


def test_finish_fuses_ant_fusion_into_the_unet(tiny):
    """Through the loop, ANT+fusion's weights reach parts.unet at the end (finish), not before."""
    p = _fresh(tiny)
    data = ForgetData.build(p, ROWS, references=4, seed=0)
    keep = ForgetData.build(p, [{"prompt": "a green cross", "anchor": None}], references=2, seed=1)
    ft = FinetuneParams(preserve_weight=0.0).updated(method="ant_fusion", batch_size=2, lr=1e-2, ddim_steps=10, split_step=7,
                                  lora_rank=2)
    before = {k: v.clone() for k, v in p.unet.state_dict().items()}
    touched = []

    def check(done, so_far):  # before the final check the weights are materialised
        touched.append(any(not torch.equal(v, before[k]) for k, v in p.unet.state_dict().items()))

    train(build_method(p, data, ft, LocalizeParams(), keep=keep), 2, check=check, check_every=100)
    assert touched == [True]
    changed = {k for k, v in p.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed)


def test_method_section_shorthand_and_updates():
    assert FinetuneParams(method="esd").method == FinetuneParams(method={"name": "esd"}).method
    assert FinetuneParams(method="esd").method.variant == "x"  # the config's default
    ft = FinetuneParams(method={"name": "trust", "loss": "csr", "beta": 0.5})
    same = ft.updated(method={"dynamic": False}, lr=0.01)  # same method: knobs merge
    assert (same.method.loss, same.method.beta, same.method.dynamic, same.lr) == ("csr", 0.5, False, 0.01)
    other = ft.updated(method="esd", variant="u")  # another method: its own defaults, then the knob
    assert other.method.name == "esd" and other.method.variant == "u" and not hasattr(other.method, "loss")
    with pytest.raises(ValueError, match="variant"):
        ft.updated(method="esd", variant="z")


@pytest.mark.parametrize("method", ["trust", "esd", "full"])
def test_a_diverging_run_stops_at_its_first_non_finite_loss_and_no_delta_is_written(tiny, method, tmp_path):
    """lr 1e30 (what `.inf` did before params refused it): weights overflow after the first update,
    the next loss is inf or NaN; the loop stops there, and the delta of such weights is refused."""
    from trust.delta import NonFiniteError, save_delta

    p = _fresh(tiny)
    before = {k: v.clone() for k, v in p.unet.state_dict().items()}
    data = ForgetData.build(p, ROWS, references=4, seed=0)
    ft = FinetuneParams(preserve_weight=0.0).updated(method=method, batch_size=2, lr=1e30)
    with pytest.raises(NonFiniteError, match=r"training diverged at step [2-9]: .*nothing was written"):
        train(build_method(p, data, ft, LocalizeParams(batch_size=4, xi=1.0)), 10)
    with pytest.raises(NonFiniteError, match=r"inf or NaN .* was not written"):
        save_delta(before, p.unet.state_dict(), tmp_path / "delta.safetensors", {})
    assert not (tmp_path / "delta.safetensors").exists()


def test_a_resumed_call_runs_only_the_remaining_steps_and_keeps_the_history(tiny, capsys):
    data = ForgetData.build(tiny, ROWS, references=4, seed=0)
    ft = FinetuneParams(preserve_weight=0.0).updated(method="full", batch_size=2, lr=1e-4)
    method = build_method(_fresh(tiny), data, ft, LocalizeParams())
    real, ran = method.step, []
    method.step = lambda i: ran.append(i) or real(i)
    earlier = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    r = train(method, 4, start=2, history=earlier)
    assert ran == [2, 3] and r.steps_run == 4 and r.history[:2] == earlier and [h["step"] for h in r.history] == [1, 2, 3, 4]
    assert earlier == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]  # the caller's list is not changed
    r = train(method, 4, start=4, history=r.history)  # nothing left to run
    assert r.steps_run == 4 and len(ran) == 2
    assert capsys.readouterr().err == ""  # no progress bar unless asked for


def test_sync_waits_for_cuda_only(monkeypatch):
    from trust.methods import loop

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append(a))
    loop._sync(torch.device("cpu"))
    assert calls == []
    loop._sync(torch.device("cuda", 0))
    assert len(calls) == 1


def test_checkpoints_budget_and_progress(tiny, capsys):
    """Checkpoints every k steps before the last (with the history so far), a time budget that ends
    training after the current step (but not when that step was the last), and a progress bar
    that counts a resumed run from where it starts."""
    data = ForgetData.build(tiny, ROWS, references=4, seed=0)
    ft = FinetuneParams(preserve_weight=0.0).updated(method="full", batch_size=2, lr=1e-4)
    saved, seen = [], []
    r = train(build_method(_fresh(tiny), data, ft, LocalizeParams()), 9, checkpoint_every=3,
              checkpoint=lambda done, hist: saved.append((done, [h["step"] for h in hist])),
              check=lambda done, so_far: seen.append((done, so_far.steps_run)), check_every=100)
    # at 3 and 6, not at 9: the last step writes the result, not a checkpoint
    assert saved == [(3, [1, 2, 3]), (6, [1, 2, 3, 4, 5, 6])] and seen == [(9, 9)]
    r = train(build_method(_fresh(tiny), data, ft, LocalizeParams()), 5, max_seconds=0.0)
    assert r.steps_run == 1 and r.out_of_time
    r = train(build_method(_fresh(tiny), data, ft, LocalizeParams()), 1, max_seconds=0.0)
    assert r.steps_run == 1 and not r.out_of_time  # the last step ran: nothing was cut short
    capsys.readouterr()
    train(build_method(_fresh(tiny), data, ft, LocalizeParams()), 4, start=1, progress=True)
    err = capsys.readouterr().err
    assert "finetune (full)" in err and "4/4" in err


def test_the_progress_bar_counts_a_resumed_run_from_where_it_starts(tiny, capsys):
    data = ForgetData.build(tiny, ROWS, references=2, seed=0)
    ft = FinetuneParams(preserve_weight=0.0).updated(method="full", batch_size=2, lr=1e-4)
    capsys.readouterr()
    train(build_method(_fresh(tiny), data, ft, LocalizeParams()), 3, start=1, progress=True)
    err = capsys.readouterr().err
    assert "finetune (full)" in err and "1/3" in err and "3/3" in err and "0/3" not in err
    train(build_method(_fresh(tiny), data, ft, LocalizeParams()), 2, start=1, progress=True, desc="round 1")
    err = capsys.readouterr().err
    assert "round 1" in err and "2/2" in err and "finetune" not in err
    train(build_method(_fresh(tiny), data, ft, LocalizeParams()), 2, start=1)
    assert capsys.readouterr().err == ""  # no bar unless asked


class _Clock:
    """A fake perf_counter that starts far from 0 and moves only when a step runs (1 s per step)."""

    def __init__(self):
        self.now = 5000.0

    def perf_counter(self):
        return self.now


class _TimedMethod:
    """What `train` drives, without a model: each step takes exactly one second of the fake clock."""

    name, finished = "timed", False

    def __init__(self, clock):
        # train reads the device off the parts, and runs each step in their precision context (float32: none)
        self.clock = clock
        self.parts = SimpleNamespace(unet=torch.nn.Linear(1, 1), autocast=contextlib.nullcontext)

    def step(self, step):
        self.clock.now += 1.0
        return {"loss": 0.0}

    def materialise(self):
        pass

    def finish(self):
        pass


@pytest.mark.parametrize("budget, steps_run, out_of_time", [(1.0, 2, True), (0.5, 1, True), (2.0, 3, True),
                                                            (3.0, 4, False), (100.0, 4, False)])
def test_the_time_budget_is_the_seconds_spent_in_this_call(monkeypatch, budget, steps_run, out_of_time):
    """A budget of b seconds ends training after the first step that leaves more than b seconds
    spent: a step ending exactly at b is within it. The clock's absolute value plays no part."""
    from trust.methods import loop

    clock = _Clock()
    monkeypatch.setattr(loop, "time", clock)
    r = train(_TimedMethod(clock), 4, max_seconds=budget)
    assert (r.steps_run, r.out_of_time) == (steps_run, out_of_time)
    assert r.step_s == [1.0] * steps_run and r.train_s == steps_run and r.wall_s == steps_run


@pytest.mark.parametrize("method", ["trust", "full"])
def test_gradient_checkpointing_recomputes_the_blocks_and_makes_the_same_updates(tiny, method):
    """finetune.gradient_checkpointing: the UNet's block runs again in the backward pass (its forward is
    called twice per training forward), and the step's updates equal those of a run without it."""
    data = ForgetData.build(tiny, ROWS, references=4, seed=0)
    loc = LocalizeParams(batch_size=4, xi=1.0)
    after, calls = {}, {}
    for on in (False, True):
        p = _fresh(tiny)
        ft = FinetuneParams(method=method, preserve_weight=0.0, gradient_checkpointing=on).updated(batch_size=2)
        m = build_method(p, data, ft, loc)
        # an up block: the gradient to every trained layer (TRUST's down-block rows too) passes through it
        block = next(b for b in p.unet.up_blocks if hasattr(b, "attentions"))
        before = {k: v.detach().clone() for k, v in m.params.items()}
        seen = []
        # a pre-hook: the recomputation stops early once it has what backward needs (no forward hook then)
        hook = block.resnets[0].register_forward_pre_hook(lambda *a: seen.append(1))
        m.step(0)
        hook.remove()
        calls[on] = len(seen)  # the training forward, and with checkpointing its recomputation in backward
        after[on] = {k: v.detach().clone() for k, v in m.params.items()}
    assert calls[False] >= 1 and calls[True] == 2 * calls[False]
    for k in after[False]:
        assert torch.allclose(after[True][k], after[False][k], atol=1e-6), k
    assert any(not torch.equal(after[False][k], before[k]) for k in before)  # the step did move them
