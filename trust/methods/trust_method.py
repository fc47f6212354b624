"""TRUST: dynamic concept-neuron localisation + selective fine-tuning (METHODS.md).

Only the masked rows of the cross-attention projections change: every other parameter has
requires_grad=False, gradients are multiplied by the mask, and Adam moments of rows that
leave the mask are zeroed so they receive no update either. The mask is re-estimated every
`reestimate_every` steps from the current weights (saliency drift).
"""

from __future__ import annotations

import copy

import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.losses import cip_penalty, csr_penalty, forget_loss
from trust.methods.saliency import cross_attention_params, expand_mask, jaccard, mask_size, neuron_scores, zscore_mask
from trust.models.parts import DiffusionParts


def denoise_saliency(
    unet, frozen_unet, params: dict[str, torch.nn.Parameter], data: ForgetData, parts: DiffusionParts,
    loc: LocalizeParams, *key: int,
) -> dict[str, torch.Tensor]:
    """Mask from |d L_prev / d theta| (the `denoise` concept scorer: no sampling)."""
    x_t, t, c_target, c_anchor, _ = data.batch(parts, loc.batch_size, *key)
    with torch.no_grad():
        target_eps = frozen_unet(x_t, t, encoder_hidden_states=c_anchor).sample
    flags = {k: p.requires_grad for k, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    loss = forget_loss(unet(x_t, t, encoder_hidden_states=c_target).sample, target_eps)
    grads = torch.autograd.grad(loss, list(params.values()))
    for k, p in params.items():
        p.requires_grad_(flags[k])
    scores = neuron_scores(dict(zip(params, grads)), loc.granularity)
    return zscore_mask(scores, loc.xi, loc.normalise)


class TrustMethod:
    name = "trust"

    def __init__(self, parts: DiffusionParts, data: ForgetData, ft: FinetuneParams, loc: LocalizeParams,
                 initial_mask: dict[str, torch.Tensor], keep: ForgetData | None = None):
        self.parts, self.data, self.ft, self.loc, self.keep = parts, data, ft, loc, keep
        if ft.preserve_weight > 0 and keep is None:
            raise ValueError("finetune.preserve_weight > 0 needs preservation prompts (concept.preserve)")
        self.frozen = copy.deepcopy(parts.unet).requires_grad_(False).eval()
        parts.unet.requires_grad_(False)
        self.params = cross_attention_params(parts.unet, loc.modules)
        for p in self.params.values():
            p.requires_grad_(True)
        missing = set(self.params) ^ set(initial_mask)
        if missing:
            raise ValueError(f"mask does not match the UNet's cross-attention projections: {sorted(missing)[:3]}")
        self.mask = {k: v.clone() for k, v in initial_mask.items()}
        self.opt = torch.optim.Adam(list(self.params.values()), lr=ft.lr)

    def trainable_parameters(self) -> int:
        return int(sum(p.numel() for p in self.params.values()))

    def reestimate(self, step: int) -> dict:
        new = denoise_saliency(self.parts.unet, self.frozen, self.params, self.data, self.parts, self.loc,
                               self.ft.seed, step, 2)
        overlap = jaccard(self.mask, new)
        for k, p in self.params.items():
            st = self.opt.state.get(p)
            if st:  # rows leaving the mask get no momentum-driven update
                keep = expand_mask(new[k], p)
                st["exp_avg"].mul_(keep)
                st["exp_avg_sq"].mul_(keep)
        self.mask = new
        return {"jaccard": overlap}

    def step(self, step: int) -> dict:
        info = {}
        if self.ft.dynamic and step > 0 and step % self.ft.reestimate_every == 0:
            info.update(self.reestimate(step))
        x_t, t, c_target, c_anchor, _ = self.data.batch(self.parts, self.ft.batch_size, self.ft.seed, step, 1)
        with torch.no_grad():
            target = self.frozen(x_t, t, encoder_hidden_states=c_anchor).sample
        eps = self.parts.unet(x_t, t, encoder_hidden_states=c_target).sample
        l_prev = forget_loss(eps, target)
        if self.ft.loss == "cip":
            reg = cip_penalty(self.params, self.mask)
        else:
            reg = csr_penalty(eps, self.params, self.mask)
        loss = l_prev + self.ft.beta * reg
        if self.ft.preserve_weight > 0:
            k_t, k_tt, k_c, _, _ = self.keep.batch(self.parts, self.ft.batch_size, self.ft.seed, step, 3)
            with torch.no_grad():
                k_target = self.frozen(k_t, k_tt, encoder_hidden_states=k_c).sample
            l_keep = forget_loss(self.parts.unet(k_t, k_tt, encoder_hidden_states=k_c).sample, k_target)
            loss = loss + self.ft.preserve_weight * l_keep
            info["l_keep"] = l_keep.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for k, p in self.params.items():
            p.grad.mul_(expand_mask(self.mask[k], p))
        self.opt.step()
        info.update({"loss": loss.item(), "l_prev": l_prev.item(), "l_reg": reg.item(), "mask_size": mask_size(self.mask)})
        return info

    # -- checkpointing (safetensors-friendly flat tensors) ---------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, (k, p) in enumerate(self.params.items()):
            out[f"param.{k}"] = p.detach()
            out[f"mask.{k}"] = self.mask[k]
            st = self.opt.state.get(p)
            if st:
                out[f"adam.{k}.exp_avg"], out[f"adam.{k}.exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
                out[f"adam.{k}.step"] = torch.as_tensor(st["step"]).reshape(1)
        return out

    def load_state_tensors(self, t: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(t[f"param.{k}"])
                self.mask[k] = t[f"mask.{k}"].clone()
                if f"adam.{k}.exp_avg" in t:
                    self.opt.state[p] = {"step": t[f"adam.{k}.step"].reshape(()).clone(),
                                         "exp_avg": t[f"adam.{k}.exp_avg"].clone(),
                                         "exp_avg_sq": t[f"adam.{k}.exp_avg_sq"].clone()}


METHODS = {"trust": TrustMethod}
