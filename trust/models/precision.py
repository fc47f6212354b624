"""`model.dtype`: the precision every stage computes in (float32, bfloat16, float16).

Mixed precision, as in torch's automatic mixed precision: the weights a method trains stay in
float32 (the masters: the trained UNet, its gradients and Adam moments), and the forwards run under
`torch.autocast` in the chosen dtype, which halves activation memory and, on a GPU, runs on its
half-precision units. What is never trained is *stored* in the dtype as well: a method's frozen
copy of the UNet (its training targets) and the evaluate stage's pre-erasure copy, the two largest
tensors after the UNet itself at SD size. The base model in `DiffusionParts` keeps its float32
weights, so its fingerprint, the deltas and the registry are the same whatever the dtype.

float16 gradients underflow where float32's would not (its smallest normal number is 6e-5); the
one backward of every method (Method.update) scales the loss dynamically for float16 (torch's
GradScaler: a step whose gradients overflow is skipped and the scale halved). bfloat16 has
float32's range and needs no scaling.
"""

from __future__ import annotations

import contextlib
import copy

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype: {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def is_mixed(dtype: torch.dtype) -> bool:
    return dtype != torch.float32


def autocast(device: torch.device | str, dtype: torch.dtype):
    """The forwards' precision context: nothing for float32, torch.autocast otherwise."""
    if not is_mixed(dtype):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def stored_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A deep copy of `module` whose floating-point weights are stored in `dtype` (a frozen copy
    that is only ever run under `autocast`). Each tensor is cast as it is copied, so the copy never
    exists in float32 (a float32 deep copy cast afterwards peaks at the full float32 size: measured
    at SD size, the bfloat16 frozen copy then saved 0.2 of its 1.7 GB)."""
    if not is_mixed(dtype):
        return copy.deepcopy(module)
    memo: dict[int, object] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point() and id(t) not in memo:
            cast = t.detach().to(dtype)
            memo[id(t)] = torch.nn.Parameter(cast, requires_grad=t.requires_grad) \
                if isinstance(t, torch.nn.Parameter) else cast
    return copy.deepcopy(module, memo)


class LossScale:
    """Dynamic loss scaling for float16 training (torch.amp.GradScaler); for other dtypes every
    call is the plain backward and step."""

    def __init__(self, dtype: torch.dtype, device: torch.device | str):
        self.scaler = torch.amp.GradScaler(torch.device(device).type) if dtype == torch.float16 else None

    def backward_and_step(self, loss: torch.Tensor, opt, *step_args) -> None:
        if self.scaler is None:
            loss.backward()
            opt.step(*step_args)
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(opt, *step_args)  # skipped when a gradient is inf/nan after unscaling
        self.scaler.update()

    def state(self) -> dict[str, torch.Tensor]:
        if self.scaler is None:
            return {}
        st = self.scaler.state_dict()
        return {"amp.scale": torch.tensor(float(st.get("scale", 0.0)), dtype=torch.float64),
                "amp.growth_tracker": torch.tensor(int(st.get("_growth_tracker", 0)))}

    def load(self, t: dict[str, torch.Tensor]) -> None:
        if self.scaler is None or "amp.scale" not in t:
            return
        st = self.scaler.state_dict()
        st.update(scale=float(t["amp.scale"]), _growth_tracker=int(t["amp.growth_tracker"]))
        self.scaler.load_state_dict(st)
