"""TRUST: dynamic concept-neuron localisation + selective fine-tuning (docs/methods.md).

Only the masked rows of the cross-attention projections change: every other parameter has
requires_grad=False, gradients are multiplied by the mask, and Adam moments of rows that
leave the mask are zeroed so they receive no update either. The mask is re-estimated every
`reestimate_every` steps from the current weights (saliency drift) with the configured
concept scorer (`localize.scorer`).
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from trust.config import LocalizeParams
from trust.methods.base import Method
from trust.methods.data import ForgetData
from trust.methods.losses import cip_penalty, csr_penalty, forget_loss
from trust.methods.saliency import cross_attention_params, expand_mask, jaccard, mask_size
from trust.methods.scorers import DenoiseScorer, build_scorer
from trust.methods.target_pool import TargetPool
from trust.models.parts import DiffusionParts


def denoise_saliency(
    unet, frozen_unet, params: dict[str, torch.nn.Parameter], data: ForgetData, parts: DiffusionParts,
    loc: LocalizeParams, *key: int,
) -> dict[str, torch.Tensor]:
    """Mask from |d L_prev / d theta| (the `denoise` concept scorer: no sampling)."""
    return DenoiseScorer(parts, data, loc).mask(unet, frozen_unet, params, *key)


class TrustMethod(Method):
    name = "trust"

    def select_parameters(self):
        return cross_attention_params(self.parts.unet, self.loc.modules)

    def setup(self, initial_mask):
        res = self.resources
        self.scorer = (res.scorer if res and res.scorer is not None else
                       build_scorer(self.loc, self.parts, self.data, classifier=res.classifier if res else None,
                                    detect=res.detect if res else None, clip=res.clip if res else None))
        if initial_mask is None:  # TRUST's own localisation (the localize stage's work) from the start weights
            initial_mask = self.scorer.mask(self.parts.unet, self.parts.unet, self.params, self.loc.seed, 0, 0)
        missing = set(self.params) ^ set(initial_mask)
        if missing:
            raise ValueError(f"mask does not match the UNet's cross-attention projections: {sorted(missing)[:3]}")
        self.mask = {k: v.clone() for k, v in initial_mask.items()}
        # cheaper frozen targets (target_pool): the forget rows only when no inner attack changes their conditions
        cfg, seed = self.cfg, self.ft.seed
        self.forget_pool = TargetPool("forget", cfg.target_pool if not self.ft.adversarial.enabled else 0,
                                      cfg.target_fresh, seed)
        self.keep_pool = TargetPool("keep", cfg.target_pool, cfg.target_fresh, seed + 1) if cfg.target_pool else None

    def reestimate(self, step: int) -> dict:
        t0 = time.perf_counter()
        new = self.scorer.mask(self.parts.unet, self.frozen, self.params, self.ft.seed, step, 2)
        overlap = jaccard(self.mask, new)
        for k, p in self.params.items():  # rows leaving the mask forget their moments (and step counts)
            self.opt.reset(p, expand_mask(new[k], p))
        self.mask = new
        return {"jaccard": overlap, "reestimate_s": time.perf_counter() - t0}

    def forget_rows(self, step: int, info: dict):
        """(x_t, t, c_in, target) of the forget batch: fresh (`forget_batch`, `forget_target`), or with
        target_pool most rows and their targets from the pool."""
        if not self.forget_pool.size:
            x_t, t, c_in, c_target, c_anchor = self.forget_batch(step, info)
            return x_t, t, c_in, self.forget_target(x_t, t, c_target, c_anchor)

        def compute(n: int):
            idx, (x_t, t, c_target, c_anchor, _) = self.data.batch_rows(self.parts, n, self.ft.seed, step, 1)
            return x_t, t, idx, self.forget_target(x_t, t, c_target, c_anchor)

        x_t, t, idx, target = self.forget_pool.rows(step, self.ft.batch_size, compute)
        return x_t, t, self.data.target_emb[idx], target

    def extra_state(self) -> dict[str, torch.Tensor]:
        out = dict(self.forget_pool.state())
        if self.keep_pool is not None:
            out.update(self.keep_pool.state())
        return out

    def load_extra_state(self, t: dict[str, torch.Tensor]) -> None:
        self.forget_pool.load(t)
        if self.keep_pool is not None:
            self.keep_pool.load(t)

    def step(self, step: int) -> dict:
        info = {}
        if self.cfg.dynamic and step > 0 and step % self.cfg.reestimate_every == 0:
            info.update(self.reestimate(step))
        x_t, t, c_in, target = self.forget_rows(step, info)
        # CSR backpropagates through a gradient: fused attention kernels have no double backward.
        ctx = sdpa_kernel([SDPBackend.MATH]) if self.cfg.loss == "csr" else contextlib.nullcontext()
        with ctx:
            eps = self.parts.unet(x_t, t, encoder_hidden_states=c_in).sample
            l_prev = forget_loss(eps, target)
            if self.cfg.loss == "cip":
                reg = cip_penalty(self.params, self.mask)
            else:
                reg = csr_penalty(eps, self.params, self.mask)
        loss = self.with_preservation(l_prev + self.cfg.beta * reg, step, info)
        self.update(loss)
        info.update({"loss": loss.item(), "l_prev": l_prev.item(), "l_reg": reg.item(), "mask_size": mask_size(self.mask)})
        return info
