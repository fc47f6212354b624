"""SalUn (Fan et al. 2024) for diffusion: one *static* weight-saliency mask, then masked
fine-tuning with `L_prev + alpha * L_retain`.

Mask: |sum of gradients of the forget loss| over one pass through all forget references
(batches of finetune.batch_size, at the original weights), global top `salun_fraction` of all
UNet weights kept (element granularity). Tensors with no kept entry are frozen.
L_retain (SalUn's): the plain diffusion loss `|| eps(x_t,t,c_keep) - noise ||^2` on noised
images of the preservation prompts made by the frozen model.
"""

from __future__ import annotations

import torch

from trust.methods.base import Method
from trust.methods.losses import forget_loss


def global_top_mask(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """1.0 on the top `fraction` of all entries (exact count, ties by index), else 0.0."""
    names = list(scores)
    flat = torch.cat([scores[k].flatten() for k in names])
    keep = max(1, int(round(fraction * flat.numel())))
    m = torch.zeros_like(flat)
    m[torch.topk(flat, keep, sorted=False).indices] = 1.0
    out, i = {}, 0
    for k in names:
        n = scores[k].numel()
        out[k] = m[i : i + n].view_as(scores[k])
        i += n
    return out


class SalunMethod(Method):
    name = "salun"

    @classmethod
    def needs_keep(cls, ft) -> bool:
        return ft.method.retain_weight > 0 or ft.preserve_weight > 0

    def keep_reason(self) -> str:
        return f"finetune.method.retain_weight={self.cfg.retain_weight} > 0"

    def keep_weight(self) -> float:  # SalUn's own retain term keeps the preservation prompts
        return self.cfg.retain_weight if self.cfg.retain_weight > 0 else self.ft.preserve_weight

    def set_keep_weight(self, w: float) -> None:
        if self.cfg.retain_weight > 0:
            self.ft = self.ft.updated(retain_weight=w)
            self.cfg = self.ft.method
        else:
            super().set_keep_weight(w)

    def select_parameters(self):
        return dict(self.parts.unet.named_parameters())

    def saliency(self) -> dict[str, torch.Tensor]:
        acc = {k: torch.zeros_like(p) for k, p in self.params.items()}
        n = len(self.data)
        for p in self.params.values():
            p.requires_grad_(True)
        try:
            for i, start in enumerate(range(0, n, self.ft.batch_size)):
                idx = torch.arange(start, min(n, start + self.ft.batch_size))
                x_t, t, c_target, c_anchor, _ = self.data.batch_at(self.parts, idx, self.ft.seed, 1_000_000, i)
                target = self.forget_target(x_t, t, c_target, c_anchor)
                loss = forget_loss(self.parts.unet(x_t, t, encoder_hidden_states=c_target).sample, target)
                for k, g in zip(self.params, torch.autograd.grad(loss, list(self.params.values()))):
                    acc[k] += g
        finally:
            for p in self.params.values():
                p.requires_grad_(False)
        return {k: g.abs() for k, g in acc.items()}

    def setup(self, initial_mask):
        mask = global_top_mask(self.saliency(), self.cfg.fraction)
        self.mask = {k: m for k, m in mask.items() if m.any()}
        self.params = {k: p for k, p in self.params.items() if k in self.mask}

    def retain_loss(self, step: int) -> torch.Tensor:
        x_t, t, c, _, noise = self.keep.batch(self.parts, self.ft.batch_size, self.ft.seed, step, 4)
        return ((self.parts.unet(x_t, t, encoder_hidden_states=c).sample - noise) ** 2).mean()

    def step(self, step: int) -> dict:
        info = {}
        x_t, t, c_in, c_target, c_anchor = self.forget_batch(step, info)
        target = self.forget_target(x_t, t, c_target, c_anchor)
        l_prev = forget_loss(self.parts.unet(x_t, t, encoder_hidden_states=c_in).sample, target)
        loss = l_prev
        if self.cfg.retain_weight > 0:
            l_retain = self.retain_loss(step)
            info["l_retain"] = l_retain.item()
            loss = loss + self.cfg.retain_weight * l_retain
        loss = self.with_preservation(loss, step, info)
        self.update(loss)
        info.update({"loss": loss.item(), "l_prev": l_prev.item(), **self.mask_info()})
        return info
