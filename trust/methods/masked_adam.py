"""Adam whose bias correction counts each entry's own steps inside the mask.

Every fine-tuning method steps its parameters with this optimizer (trust/methods/base.py). With no
mask, or a mask that never changes (SalUn), it is torch's Adam exactly: every entry has been updated
on every step, so its own count is the global one. It differs only where a mask moves (TRUST's
re-estimation): a row that enters the mask at step t starts with zero moments, and torch's Adam
corrects them with the *global* count t, which over-corrects nothing in the first moment
(1 - 0.9^t ~ 1) but divides the second by 1 - 0.999^t as if it had t steps behind it: for a
constant gradient the row's next 10-20 updates are ~1.3x the learning rate when it enters at
t = 40, ~3.6x at t = 400 and ~5x at t = 1000, instead of Adam's 1x. On the world consecutive
TRUST masks share only 20-40% of their rows (Jaccard), so most of the mask took those oversized
steps after every re-estimation; here a row's count starts when it enters, and its updates are
lr * sign(g) for a constant gradient, as Adam's are.

`reset(p, keep)` forgets the moments and counts of the entries where `keep` is 0 (rows that leave the
mask: a row that re-enters later starts afresh rather than from stale momentum).
"""

from __future__ import annotations

import torch


class MaskedAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, masks: dict[torch.Tensor, torch.Tensor] | None = None) -> None:
        """One step; `masks` maps a parameter to its 0/1 mask of its own shape (absent: all entries).
        Entries outside the mask neither move nor count a step."""
        masks = masks or {}
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                    st["step"] = torch.zeros_like(p)
                a = masks.get(p)
                g = p.grad if a is None else p.grad * a
                inside = torch.ones_like(p) if a is None else (a != 0).to(p.dtype)
                st["step"].add_(inside)
                # moments move only where the entry is in the mask (outside, g is 0 and they stay as they are)
                st["exp_avg"].mul_(1 - (1 - b1) * inside).add_(g, alpha=1 - b1)
                st["exp_avg_sq"].mul_(1 - (1 - b2) * inside).addcmul_(g, g, value=1 - b2)
                n = st["step"].clamp(min=1)
                m_hat = st["exp_avg"] / (1 - b1 ** n)
                v_hat = st["exp_avg_sq"] / (1 - b2 ** n)
                p.sub_(group["lr"] * inside * m_hat / (v_hat.sqrt() + group["eps"]))

    @torch.no_grad()
    def reset(self, p: torch.Tensor, keep: torch.Tensor) -> None:
        """Forget the state of `p`'s entries where `keep` (0/1, p's shape) is 0."""
        st = self.state.get(p)
        if st:
            for k in ("exp_avg", "exp_avg_sq", "step"):
                st[k].mul_(keep)
