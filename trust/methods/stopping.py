"""Erase to a bar: the check the training loop runs every few steps (trust/methods/loop.py).

At each check the current weights sample the *validation* prompts (the prompts stage's `val`
split: never the held-out `eval` prompts the gates are measured on) with fixed seeds, few images
and few sampling steps, and a judge says which images show what: the target's rate and every kept
concept's rate, the latter against the frozen model's rate on the same prompts and seeds (measured
once, before training). Training stops when both hold with a margin, on the check's few sampling
steps and then again on the gates' own (`confirm_steps`):

    val target rate <= register.gates.max_target_rate - margin
    every kept concept's val drop <= register.gates.max_preservation_drop - margin

(with finetune.adversarial and its `check`, the val target rate is the worse of the clean rate and
the rate on the val target prompts attacked afresh by the inner attack: trust/methods/adversarial.py)
(with several concepts in one run there is one target group per concept, and the val target rate is
the worst concept's: the bar holds when every one of them is erased)

The target is measured first; while it is above its gate the kept concepts are measured at every
`kept_every`-th check only (no stop is possible there and a kept drop can only raise the preservation
weight; with four kept concepts a target-only check costs a fifth of a full one), at or below the gate at
every check.

It adapts when the bar does not hold (finetune.to_bar.adapt), one change per check, each logged:
- a kept concept dropped past the gate itself (max_preservation_drop), or the target is within its
  gate and a kept concept outside the margin -> the preservation weight x keep_weight_factor (the
  method's own weight: preserve_weight, SalUn's retain_weight), up to max_keep_weight_factor x the
  configured one (while the target is still above its gate, a drop inside the gate only blocks the
  stop);
- the target is within the gate but a kept concept is outside the margin -> also the step size /
  lr_factor (down to min_lr_factor x finetune.lr): smaller steps consolidate;
- the target rate is above the gate itself and made no progress (by one validation image) for
  `patience` checks -> the step size x lr_factor, up to max_lr_factor x finetune.lr.
The budget is finetune.steps and finetune.max_seconds; when it runs out first the stage fails
(BarNotReached) and nothing is written or registered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from trust.methods.loop import STOP
from trust.sampling import generate, generate_from


class BarNotReached(RuntimeError):
    """Training used its budget without reaching the bar on the validation prompts."""


@dataclass
class ValGroup:
    """Validation prompts of one role (the target, or one kept concept) and what 'shows it' means."""

    name: str
    prompts: list[str]
    hits: Callable[[torch.Tensor], list[bool]]  # images -> shows it, per image
    kept: bool = True  # a kept concept (its drop is checked) or the target (its rate is)


@dataclass
class BarState:
    keep_weight: float
    lr: float
    checks: list[dict] = field(default_factory=list)
    adaptations: list[dict] = field(default_factory=list)
    reached: bool = False
    best_target: float = float("inf")
    since_best: int = 0

    def record(self) -> dict:
        return {"keep_weight": self.keep_weight, "lr": self.lr, "checks": self.checks,
                "adaptations": self.adaptations, "reached": self.reached,
                "best_target": self.best_target, "since_best": self.since_best}

    @classmethod
    def restore(cls, d: dict) -> "BarState":
        return cls(**d)


class BarCheck:
    """The loop's `check`: measure the validation rates, stop at the bar, adapt otherwise."""

    def __init__(self, method, groups: list[ValGroup], cfg, max_target_rate: float, max_drop: float, *,
                 seed: int = 0, guidance: float = 4.0, state: BarState | None = None, log=None,
                 attacked: bool = False, attacked_stops: bool = True):
        if not any(not g.kept for g in groups):
            raise ValueError("erase to a bar needs validation target prompts (the prompts stage's target.val)")
        # Several targets (several concepts in one run): the check's target rate is the worst of them
        self.targets = [g for g in groups if not g.kept]
        if attacked and len(self.targets) > 1:
            raise ValueError("an attacked check takes one target group; several concepts are refused with "
                             "finetune.adversarial in params")
        self.method, self.groups, self.cfg = method, groups, cfg
        self.gate_target, self.gate_drop = max_target_rate, max_drop
        self.max_target = max_target_rate - cfg.margin
        self.max_drop = max_drop - cfg.margin
        self.guidance, self.log = guidance, log or (lambda m: None)
        self.prompts, self.seeds, self.slices = [], [], {}
        for g in groups:
            start = len(self.prompts)
            for j, p in enumerate(g.prompts[: cfg.max_prompts]):
                for s in range(cfg.samples_per_prompt):
                    self.prompts.append(p)
                    self.seeds.append(seed * 1_000_003 + 7_919 * j + s)  # same seeds at every check
            self.slices[g.name] = slice(start, len(self.prompts))
        self.base = self.rates()  # the frozen (starting) model, before any step
        # ... and at the confirmation's sampling steps (below)
        self.base_confirm = (self.rates(cfg.confirm_steps) if cfg.confirm_steps and cfg.confirm_steps != cfg.sample_steps
                             else None)
        self.state = state or BarState(keep_weight=method.keep_weight(), lr=method.lr())
        self.seconds = 0.0
        # finetune.adversarial: the target's rate is also measured under a fresh inner attack at every
        # check; with `check` (attacked_stops) the stop rule reads it, otherwise it is only logged
        self.attack, self.attacked_stops = None, attacked_stops
        if attacked:
            from trust.methods.adversarial import ValAttack

            self.attack = ValAttack(method, self.targets[0].prompts[: cfg.max_prompts], seed)

    def resume(self) -> None:
        """After the method's checkpoint is loaded: its adapted settings are the method's again."""
        self.method.set_keep_weight(self.state.keep_weight)
        self.method.set_lr(self.state.lr)

    @torch.no_grad()
    def rates(self, steps: int | None = None, groups: list[ValGroup] | None = None) -> dict[str, float]:
        """Each group's rate (all groups, or `groups`: only their images are made) at `steps` sampling steps."""
        groups = self.groups if groups is None else groups
        prompts, seeds, spans = [], [], {}
        for g in groups:
            s = self.slices[g.name]
            spans[g.name] = slice(len(prompts), len(prompts) + s.stop - s.start)
            prompts += self.prompts[s]
            seeds += self.seeds[s]
        images = generate(self.method.parts, prompts, seeds, steps=steps or self.cfg.sample_steps,
                          guidance=self.guidance)
        out = {}
        for g in groups:
            hits = g.hits(images[spans[g.name]])
            out[g.name] = sum(hits) / len(hits) if hits else float("nan")
        return out

    def _measure_kept(self, t_rate: float) -> bool:
        """At or below the target's gate every check measures the kept concepts (they decide the stop and
        the consolidation); above it, every `kept_every`-th (counted since the last that did)."""
        if t_rate <= self.gate_target + 1e-9:
            return True
        since = 0
        for c in reversed(self.state.checks):
            if "val_keep_drop" in c:
                break
            since += 1
        else:
            return True  # no check measured them yet
        return since + 1 >= self.cfg.kept_every

    def _last_drops(self) -> dict[str, float]:
        return next((c["val_keep_drop"] for c in reversed(self.state.checks) if "val_keep_drop" in c), {})

    def images_of(self, name: str) -> int:
        s = self.slices[name]
        return s.stop - s.start

    @torch.no_grad()
    def attacked_rate(self, cond: torch.Tensor, steps: int | None = None) -> float:
        """The target's rate on images of the attacked validation conditions (same seeds as its prompts)."""
        target = self.targets[0]
        n = self.cfg.samples_per_prompt
        seeds = self.seeds[self.slices[target.name]]
        images = generate_from(self.method.parts, cond.repeat_interleave(n, 0), seeds,
                               steps=steps or self.cfg.sample_steps, guidance=self.guidance)
        hits = target.hits(images)
        return sum(hits) / len(hits)

    def __call__(self, done: int, result) -> bool | None:
        t0 = time.perf_counter()
        per_target = self.rates(groups=self.targets)
        clean = max(per_target.values())
        t_rate, attacked, found = clean, None, None
        if self.attack is not None:  # the stop rule reads the worse of the clean and the attacked rate
            found = self.attack.conditions(done)
            attacked = self.attacked_rate(found.cond)
            t_rate = max(clean, attacked) if self.attacked_stops else clean
        st = self.state
        check = {"step": done, "val_target": t_rate, "keep_weight": st.keep_weight, "lr": st.lr}
        if len(per_target) > 1:
            check["val_targets"] = per_target
        kept = [g for g in self.groups if g.kept]
        if self._measure_kept(t_rate):
            rates = self.rates(groups=kept) if kept else {}
            drops = {g.name: self.base[g.name] - rates[g.name] for g in kept}
            check.update(val_keep_drop=drops, val_worst_drop=max(drops.values(), default=0.0))
            blocking = {k: d for k, d in drops.items() if d > self.max_drop + 1e-9}
        else:
            # the target is above its gate (no stop possible): the kept concepts were not measured, and the
            # adaptation reads the latest check that measured them
            drops, blocking = self._last_drops(), {}
        failing = {k: d for k, d in drops.items() if d > self.gate_drop + 1e-9}
        if attacked is not None:
            check.update({"val_target_clean": clean, "val_target_attacked": attacked,
                          "val_attack_prompt": found.texts[0]})
        st.checks.append(check)
        if t_rate <= self.max_target + 1e-9 and "val_keep_drop" in check and not blocking \
                and self._confirmed(done, check, found):
            st.reached = True
            how = "" if attacked is None else f" (clean {clean:.2f}, attacked {attacked:.2f})"
            self.log(f"bar reached at step {done}: val target {t_rate:.2f}{how} <= {self.max_target:.2f}, worst kept "
                     f"drop {check['val_worst_drop']:+.2f} <= {self.max_drop:.2f}")
            self.seconds += time.perf_counter() - t0
            return STOP
        one_image = 1.0 / max(self.images_of(self.targets[0].name), 1)
        if t_rate < st.best_target - one_image / 2:
            st.best_target, st.since_best = t_rate, 0
        else:
            st.since_best += 1
        if self.cfg.adapt:
            self._adapt(done, t_rate, blocking, failing, measured="val_keep_drop" in check)
        self.seconds += time.perf_counter() - t0
        return None

    def _confirmed(self, done: int, check: dict, found=None) -> bool:
        """The bar, met on the check's few sampling steps, holds on the gates' own (`confirm_steps`,
        the evaluate stage's): an erased model can look erased at 10 steps and draw the concept at 20."""
        steps = self.cfg.confirm_steps
        if not steps or steps == self.cfg.sample_steps:
            return True
        rates = self.rates(steps)
        t_rate = max(rates[g.name] for g in self.targets)
        if self.attack is not None and self.attacked_stops:  # the same attacked conditions, at the gates' steps
            t_rate = max(t_rate, self.attacked_rate(found.cond, steps))
        drops = {g.name: self.base_confirm[g.name] - rates[g.name] for g in self.groups if g.kept}
        ok = t_rate <= self.max_target + 1e-9 and all(d <= self.max_drop + 1e-9 for d in drops.values())
        check["confirm"] = {"steps": steps, "val_target": t_rate, "val_keep_drop": drops, "held": ok}
        if not ok:
            self.log(f"step {done}: bar met at {self.cfg.sample_steps} sampling steps, not at {steps} (val target "
                     f"{t_rate:.2f}, worst kept drop {max(drops.values(), default=0.0):+.2f}): going on")
        return ok

    def _adapt(self, done: int, t_rate: float, blocking: dict[str, float], failing: dict[str, float],
               measured: bool = True) -> None:
        """`measured`: this check measured the kept concepts; if not, `failing` is the latest check's that
        did (it already raised the weight once; it only holds back a bigger step here)."""
        st, cfg, m = self.state, self.cfg, self.method
        # A kept concept past the gate itself raises the preservation weight; a drop inside the gate but
        # outside the margin is one or two validation images, and raising the weight on it slowed the
        # erasure more than it protected (measured).
        erased = t_rate <= self.gate_target + 1e-9
        # once the target is within its gate, any kept concept outside the margin may take a stronger term
        if measured and (failing or (erased and blocking)) and m.keep is not None:
            start = m.initial_keep_weight
            new = min(st.keep_weight * cfg.keep_weight_factor, start * cfg.max_keep_weight_factor)
            if new > st.keep_weight:
                self._change(done, "keep_weight", st.keep_weight, new, "kept concept(s) dropped: "
                             + ", ".join(f"{k} {d:+.2f}" for k, d in (failing or blocking).items()))
                st.keep_weight = new
                m.set_keep_weight(new)
        if erased and blocking:
            # Erased, but the kept concepts are not back inside the margin: smaller steps consolidate
            # (large ones kept swinging the target back, measured).
            new = max(st.lr / cfg.lr_factor, m.initial_lr * cfg.min_lr_factor)
            if new < st.lr:
                self._change(done, "lr", st.lr, new, f"val target {t_rate:.2f} within the gate, kept concept(s) "
                                                      "outside the margin: consolidate")
                st.lr = new
                m.set_lr(new)
            return
        # Near the bar (between the stop threshold and the gate itself) the last images go slowly and a
        # bigger step mostly damages the kept concepts (measured): only a target clearly above the gate
        # gets a bigger step.
        if t_rate > self.gate_target + 1e-9 and st.since_best >= cfg.patience and not failing:
            new = min(st.lr * cfg.lr_factor, m.initial_lr * cfg.max_lr_factor)
            if new > st.lr:
                self._change(done, "lr", st.lr, new, f"val target {t_rate:.2f} made no progress for "
                                                      f"{st.since_best} checks")
                st.lr, st.since_best = new, 0
                m.set_lr(new)

    def _change(self, done, what, old, new, why) -> None:
        self.state.adaptations.append({"step": done, "what": what, "from": old, "to": new, "why": why})
        self.log(f"step {done}: {what} {old:g} -> {new:g} ({why})")

    def report(self) -> str:
        last = self.state.checks[-1] if self.state.checks else None
        if last is None:
            return "no check ran"
        worst = max(last.get("val_keep_drop", self._last_drops()).items(), key=lambda kv: kv[1], default=("-", 0.0))
        return (f"after {last['step']} steps: val target {last['val_target']:.2f} (bar {self.max_target:.2f}), worst "
                f"kept drop {worst[0]} {worst[1]:+.2f} (bar {self.max_drop:.2f}); "
                f"{len(self.state.adaptations)} adaptation(s)")
