"""Erase to a bar (trust/methods/stopping.py): the check stops at the bar, adapts when it is not
held, and the finetune stage fails cleanly when the budget runs out.

The rule is tested with scripted judges (hand-made rate sequences) on a tiny model: every decision
(stop, raise the preservation weight, raise the step size, leave it) is a function of the rates.
"""

from __future__ import annotations

import copy

import pytest

from trust.config import FinetuneParams, LocalizeParams, ToBarParams
from trust.methods.data import ForgetData
from trust.methods.loop import STOP, build_method, train
from trust.methods.stopping import BarCheck, ValGroup
from tiny_models import tiny_sd_parts


def scripted(rates: list[float]):
    """A judge whose call k says `rates[k]` of the images show it (the first call: the base model)."""
    it = iter(rates)

    def hits(images):
        n, r = images.shape[0], next(it)
        k = round(r * n)
        return [True] * k + [False] * (n - k)
    return hits


@pytest.fixture(scope="module")
def setup(world_tokenizer):
    parts = tiny_sd_parts(world_tokenizer)
    rows = [{"prompt": "a red circle", "anchor": "a plain background"}]
    data = ForgetData.build(parts, rows, 2, 0)
    keep = ForgetData.build(parts, [{"prompt": "a red square", "anchor": None}], 2, 1)
    return parts, data, keep


def _method(setup, **ft):
    parts, data, keep = setup
    ft = FinetuneParams(method="full", steps=10, lr=1e-3, batch_size=2, preserve_weight=30.0, **ft)
    return build_method(copy.deepcopy(parts), data, ft, LocalizeParams(), keep=keep)


def _bar(method, target, kept, **cfg):
    cfg = ToBarParams(**{"samples_per_prompt": 10, "max_prompts": 1, "sample_steps": 2, "confirm_steps": None, **cfg})
    groups = [ValGroup("target", ["a red circle"], scripted(target), kept=False),
              ValGroup("square", ["a red square"], scripted(kept))]
    return BarCheck(method, groups, cfg, max_target_rate=0.10, max_drop=0.10)


def test_stops_only_when_both_bars_hold_with_the_margin(setup):
    m = _method(setup)
    # base, then checks: target 0.5, 0.1 (at the gate but not inside the margin), 0.0 with a kept drop
    # of 0.2, then 0.0 with the kept concept back within the margin -> stop there, not before
    bar = _bar(m, [1.0, 0.5, 0.1, 0.0, 0.0], [1.0, 1.0, 1.0, 0.8, 1.0])
    decisions = [bar(step, None) for step in (1, 2, 3, 4)]
    assert decisions == [None, None, None, STOP]
    assert bar.state.reached and bar.state.checks[-1]["val_target"] == 0.0
    assert bar.base == {"target": 1.0, "square": 1.0}


def test_a_dropping_kept_concept_raises_the_preservation_weight_up_to_its_cap(setup):
    m = _method(setup)
    # target still above the gate (0.5): only the preservation weight moves
    bar = _bar(m, [1.0] + [0.5] * 8, [1.0] + [0.7] * 8, keep_weight_factor=2.0, max_keep_weight_factor=4.0)
    for step in range(1, 5):
        assert bar(step, None) is None
    assert [(a["what"], a["to"]) for a in bar.state.adaptations] == [("keep_weight", 60.0), ("keep_weight", 120.0)]
    assert m.keep_weight() == 120.0 and m.ft.preserve_weight == 120.0  # the method's loss uses it (capped 4 x 30)
    assert m.opt.param_groups[0]["lr"] == 1e-3  # a failing kept concept never gets a bigger step


def test_erased_but_kept_concepts_outside_the_margin_consolidate_with_smaller_steps(setup):
    m = _method(setup)
    # target erased (0.0), a kept concept 0.1 down: inside the gate (no weight change), outside the margin
    bar = _bar(m, [1.0] + [0.0] * 4, [1.0] + [0.9] * 4, lr_factor=2.0, min_lr_factor=0.25)
    for step in range(1, 5):
        assert bar(step, None) is None
    # each check: a stronger preservation term and a smaller step (floor 0.25 x lr, cap 8 x the weight)
    assert [(a["what"], a["to"]) for a in bar.state.adaptations] == [
        ("keep_weight", 45.0), ("lr", 5e-4), ("keep_weight", 67.5), ("lr", 2.5e-4), ("keep_weight", 101.25),
        ("keep_weight", 151.875)]
    assert m.opt.param_groups[0]["lr"] == 2.5e-4 and m.keep_weight() == 151.875


def test_a_stalled_target_above_the_gate_raises_the_step_size_and_near_the_bar_does_not(setup):
    m = _method(setup)
    bar = _bar(m, [1.0] + [0.5] * 6, [1.0] * 7, patience=3, lr_factor=1.5, max_lr_factor=2.0)
    for step in range(1, 7):
        bar(step, None)
    # first check sets the best; three more without progress -> lr x1.5; then capped at 2x
    assert [(a["what"], a["step"], a["to"]) for a in bar.state.adaptations] == [("lr", 4, 1.5e-3)]
    assert m.opt.param_groups[0]["lr"] == pytest.approx(1.5e-3)

    near = _method(setup)  # 0.08: under the gate (0.10), above the stop threshold (0.05): keep going
    bar = _bar(near, [1.0] + [0.08 + 0.001] * 6, [1.0] * 7, patience=1)
    for step in range(1, 7):
        assert bar(step, None) is None
    assert bar.state.adaptations == [] and near.opt.param_groups[0]["lr"] == 1e-3


def test_adapt_off_only_stops(setup):
    m = _method(setup)
    bar = _bar(m, [1.0] + [0.5] * 5, [1.0] + [0.5] * 5, adapt=False, patience=1)
    for step in range(1, 6):
        bar(step, None)
    assert bar.state.adaptations == [] and m.keep_weight() == 30.0


def test_the_loop_stops_at_the_bar_and_a_time_budget_ends_training(setup):
    m = _method(setup)
    bar = _bar(m, [1.0, 0.5, 0.0], [1.0, 1.0, 1.0])
    result = train(m, 10, check=bar, check_every=2)
    assert result.stopped and result.steps_run == 4  # checks after steps 2 and 4
    m = _method(setup)
    result = train(m, 10_000, max_seconds=0.0)
    assert result.out_of_time and result.steps_run == 1


def test_a_bar_met_on_few_sampling_steps_is_confirmed_on_the_gates_steps(setup):
    m = _method(setup)
    # calls: base (2 steps), base (3 steps), check 1 (2 steps) meets the bar, its confirmation (3 steps)
    # does not -> go on; check 2 meets it and its confirmation holds -> stop
    bar = _bar(m, [1.0, 1.0, 0.0, 0.3, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], confirm_steps=3)
    assert bar(1, None) is None and not bar.state.reached
    assert bar.state.checks[0]["confirm"] == {"steps": 3, "val_target": 0.3, "val_keep_drop": {"square": 0.0},
                                              "held": False}
    assert bar(2, None) is STOP and bar.state.reached and bar.state.checks[1]["confirm"]["held"]


def counted(rates: list[float]):
    """`scripted`, also recording how many images each call judged."""
    judge, sizes = scripted(rates), []

    def hits(images):
        sizes.append(images.shape[0])
        return judge(images)
    return hits, sizes


def test_above_the_gate_the_kept_concepts_are_measured_every_kept_every_th_check_only(setup):
    m = _method(setup)
    target, t_sizes = counted([1.0, 0.5, 0.5, 0.5, 0.5, 0.05])
    kept, k_sizes = counted([1.0, 1.0, 1.0, 1.0, 1.0])
    cfg = ToBarParams(samples_per_prompt=10, max_prompts=1, sample_steps=2, confirm_steps=None, kept_every=2,
                      adapt=False)
    groups = [ValGroup("target", ["a red circle"], target, kept=False), ValGroup("square", ["a red square"], kept)]
    bar = BarCheck(m, groups, cfg, max_target_rate=0.10, max_drop=0.10)
    decisions = [bar(step, None) for step in range(1, 6)]
    # checks 1 (none measured yet) and 3 measure the kept concept; 2 does not (target 0.5 above the gate);
    # 4 does not either (one check since 3): its target 0.5; 5 is within the bar: measured, and it stops
    assert ["val_keep_drop" in c for c in bar.state.checks] == [True, False, True, False, True]
    assert decisions == [None, None, None, None, STOP]
    assert len(k_sizes) == 1 + 3 and len(t_sizes) == 1 + 5  # the base, then the checks that measured it
    assert set(t_sizes) == {10} and set(k_sizes) == {10}  # a target-only check made only the target's images


def test_a_stale_kept_drop_raises_the_preservation_weight_once_not_at_every_check(setup):
    m = _method(setup)
    # the kept concept is past its gate at check 1 (measured); check 2 does not measure it: one raise, not two
    bar = _bar(m, [1.0] + [0.5] * 2, [1.0, 0.7], kept_every=2, keep_weight_factor=2.0, max_keep_weight_factor=8.0,
               patience=1)
    assert bar(1, None) is None and bar(2, None) is None
    assert [(a["what"], a["step"]) for a in bar.state.adaptations] == [("keep_weight", 1)]
    assert m.opt.param_groups[0]["lr"] == 1e-3  # ... and the stale failing drop still holds back a bigger step
