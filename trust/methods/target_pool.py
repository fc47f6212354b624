"""Cheaper frozen targets: a ring buffer of training rows whose frozen-model targets were already paid for.

Profiled on the world (2-core CPU, one thread; bench/results/tries/trust_speed.md): a TRUST step took
0.46 s, 40% of it in the frozen model's forwards (the forget target's anchor and concept predictions,
and the preservation term's target), work that does not depend on the weights being trained. With a
pool of `size` rows, the first size / batch steps are exactly today's (every row fresh, and kept);
after that each step draws `fresh` x batch rows afresh (keyed by its step, as before) and the rest from
the pool (also keyed by the step), and the fresh rows replace the oldest ones. The frozen model then
runs on `fresh` of the rows only, while the pool keeps renewing. Nothing about the loss changes: each
row's target is the one the frozen model gives for its (x_t, t, condition), computed once instead of
each time the row is drawn.

Measured on the world (bench/results/trust_speed.md, 200 steps): frozen forwards 0.67x, the step 0.96x;
at a few rows the 16 px UNet's per-call overhead dominates. It is for UNets whose forward cost grows
with the rows (SD size); off by default (`target_pool: 0`).

The pool is part of the method's state (`state` / `load`), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from trust.utils.seeding import torch_generator

Rows = tuple[torch.Tensor, ...]  # same first dimension; the last one is the frozen target


class TargetPool:
    def __init__(self, name: str, size: int, fresh: float, seed: int):
        if size < 0 or not 0 < fresh <= 1:
            raise ValueError(f"target pool {name}: size {size} must be >= 0 and fresh {fresh} in (0, 1]")
        self.name, self.size, self.fresh, self.seed = name, size, fresh, seed
        self.buf: list[torch.Tensor] = []
        self.count = 0  # rows ever stored; the pool holds min(count, size)

    @property
    def held(self) -> int:
        return min(self.count, self.size)

    def rows(self, step: int, batch: int, compute: Callable[[int], Rows]) -> Rows:
        """`batch` rows for `step`; `compute(n)` makes n fresh rows (the frozen forwards happen there)."""
        if self.size == 0:
            return compute(batch)
        n_fresh = batch if self.held < self.size else max(1, math.ceil(self.fresh * batch))
        new = compute(n_fresh)
        if n_fresh < batch:  # drawn before the new rows go in: old and new rows are distinct
            pick = torch.randint(0, self.held, (batch - n_fresh,), generator=torch_generator(self.seed, 7_717, step))
            out = tuple(torch.cat([n, b[pick].to(n.device)]) for n, b in zip(new, self.buf))
        else:
            out = new
        self._store(new)
        return out

    def _store(self, new: Rows) -> None:
        if not self.buf:
            self.buf = [torch.zeros((self.size, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in new]
        n = new[0].shape[0]
        slots = torch.arange(self.count, self.count + n) % self.size
        for b, t in zip(self.buf, new):
            b[slots.to(b.device)] = t.detach()
        self.count += n

    def state(self) -> dict[str, torch.Tensor]:
        if self.size == 0:
            return {}
        out = {f"pool.{self.name}.count": torch.tensor(self.count)}
        out.update({f"pool.{self.name}.{i}": b for i, b in enumerate(self.buf)})
        return out

    def load(self, t: dict[str, torch.Tensor]) -> None:
        key = f"pool.{self.name}.count"
        if key not in t:
            return
        self.count = int(t[key])
        self.buf, i = [], 0
        while f"pool.{self.name}.{i}" in t:
            self.buf.append(t[f"pool.{self.name}.{i}"].clone())
            i += 1
