"""The one training loop: every caller (the finetune stage, the benchmarks, the re-erasure, the
tests) builds a method with `build_method` and drives it with `train`.

`build_method` hands the method what it may need and lets it build its own initial state (TRUST
its mask through its scorer, SalUn its saliency mask, ConceptPrune its pruning): no caller
special-cases a method. `train` runs the steps, records the history, checkpoints and resumes,
calls an optional check every `check_every` steps on materialised weights (the benchmarks' bar
check, snapshots), and ends with the method's `finish()` (ANT+fusion fuses its LoRA there).

Timing: `train_s` is the time inside `method.step` only; a check's own time is not counted;
`materialise_s` is the latest materialisation's time (a real run materialises once, at the end).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.delta import NonFiniteError
from trust.methods.data import ForgetData
from trust.methods.registry import method_class

if TYPE_CHECKING:
    from trust.methods.base import Method
    from trust.models.parts import DiffusionParts

STOP = True  # what a check returns to end training early


@dataclass
class Resources:
    """What some methods need beyond the prompt data: TRUST's `classifier` scorer uses the world
    classifier and the concept's detector labels, its `clip` scorer a loaded CLIP; `scorer`, a ready concept scorer, replaces the one
    TRUST would build from `localize` (a caller that already has one, a test's spy); `kept_words`, the
    kept concepts' words, which adversarial erasure's inner attack does not use; `prior`, concept-free
    replay's data (finetune.prior)."""

    classifier: torch.nn.Module | None = None
    detect: dict[str, str] | None = None
    clip: object | None = None  # trust.models.clip.Clip
    scorer: object | None = None
    kept_words: tuple[str, ...] = ()  # words of the kept concepts (adversarial erasure leaves them out)
    prior: object | None = None  # trust.methods.prior.PriorData: concept-free replay (finetune.prior)


def build_method(parts: "DiffusionParts", data: ForgetData, ft: FinetuneParams, loc: LocalizeParams,
                 keep: ForgetData | Callable[[], ForgetData] | None = None,
                 initial_mask: dict[str, torch.Tensor] | None = None,
                 resources: Resources | None = None) -> "Method":
    """The method `ft.method` on `parts` (trained in place). `keep`: the preservation data, or a
    callable that builds it, called only when the method needs it. `initial_mask`: a mask the
    method starts from instead of building its own (TRUST from the localize stage's output)."""
    cls = method_class(ft.method.name)
    if cls.needs_keep(ft):
        keep = keep() if callable(keep) else keep
    else:
        keep = None
    with parts.autocast():  # set-up's forwards (TRUST's initial saliency, SalUn's mask) in model.dtype too
        return cls(parts, data, ft, loc, initial_mask, keep=keep, resources=resources or Resources())


@dataclass
class TrainResult:
    steps_run: int
    history: list[dict] = field(default_factory=list)
    train_s: float = 0.0
    step_s: list[float] = field(default_factory=list)  # each step's own time (this call's steps)
    materialise_s: float = 0.0
    stopped: bool = False  # a check returned STOP
    out_of_time: bool = False  # max_seconds ran out before the last step
    wall_s: float = 0.0  # this call's wall-clock: steps, checks, checkpoints


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train(method: "Method", steps: int, *, start: int = 0, history: list[dict] | None = None,
          check: Callable[[int, "TrainResult"], bool | None] | None = None, check_every: int | None = None,
          checkpoint: Callable[[int, list[dict]], None] | None = None, checkpoint_every: int | None = None,
          progress: bool = False, desc: str | None = None, max_seconds: float | None = None) -> TrainResult:
    """Steps `start`..`steps`-1 of `method`. `check(done, result)` runs after every `check_every`-th
    step, after a training-free method's step and after the last step, on materialised weights
    (`result` is the run so far: its train_s and materialise_s); it may return STOP. `checkpoint(done, history)` runs every `checkpoint_every` steps before the last.
    `max_seconds`: a wall-clock budget for this call (steps, checks and checkpoints); when it runs
    out training ends after the current step (with a last check) and `out_of_time` is set.
    Ends with `method.finish()`. A resumed run (start > 0, after `method.load_state_tensors`)
    repeats an uninterrupted one: every step's randomness is keyed by its step number."""
    device = next(method.parts.unet.parameters()).device
    result = TrainResult(steps_run=start, history=list(history or []))
    t_start = time.perf_counter()
    bar = range(start, steps)
    if progress:
        from trust.utils.progress import progress as shown

        bar = shown(bar, total=steps, initial=start, desc=desc or f"finetune ({method.name})")
    for step in bar:
        t0 = time.perf_counter()
        with method.parts.autocast():  # model.dtype: forwards in it, the trained weights stay float32
            info = method.step(step)
        _sync(device)
        result.step_s.append(time.perf_counter() - t0)
        result.train_s += result.step_s[-1]
        done = result.steps_run = step + 1
        result.history.append({"step": done, **info})
        _refuse_non_finite(info, done)
        result.out_of_time = max_seconds is not None and time.perf_counter() - t_start > max_seconds and done < steps
        last = method.finished or done == steps or result.out_of_time
        if check is not None and (last or (check_every and done % check_every == 0)):
            _materialise(method, result, device)  # (not under autocast: a fused LoRA is written in float32)
            with method.parts.autocast():  # the check's sampling and inner attack in model.dtype
                stop = check(done, result) is STOP
            if stop:
                result.stopped = True
                break
        if method.finished or result.out_of_time:  # training-free methods (conceptprune): one step
            break
        if checkpoint is not None and checkpoint_every and done % checkpoint_every == 0 and done < steps:
            checkpoint(done, result.history)
    t0 = time.perf_counter()
    method.finish()
    _sync(device)
    if check is None:  # otherwise the weights were materialised for the last check already
        result.materialise_s = time.perf_counter() - t0
    result.wall_s = time.perf_counter() - t_start
    return result


def _refuse_non_finite(info: dict, step: int) -> None:
    # A diverged run (an lr of 1e6) makes every later step's loss NaN and every weight NaN; stop at
    # the first such step, before anything is checkpointed, written or registered.
    bad = {k: v for k, v in info.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFiniteError(f"training diverged at step {step}: " + ", ".join(f"{k} = {v}" for k, v in bad.items())
                             + "; nothing was written. Lower finetune.lr (or the method's loss weights)")


def _materialise(method: "Method", result: TrainResult, device: torch.device) -> None:
    t0 = time.perf_counter()
    method.materialise()
    _sync(device)
    result.materialise_s = time.perf_counter() - t0
