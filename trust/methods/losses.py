"""Unlearning losses (docs/methods.md): forget loss L_prev, ESD negative guidance, CIP (hard) and CSR (soft)."""

from __future__ import annotations

import torch

from trust.methods.saliency import expand_mask


def forget_loss(eps_target: torch.Tensor, eps_anchor_frozen: torch.Tensor) -> torch.Tensor:
    """L_prev = || eps(x_t, t, c_target) - sg[eps*(x_t, t, c_anchor)] ||^2."""
    # in float32 whatever the forwards computed in (model.dtype): a half-precision mean of ~1e-2 squares loses digits
    return ((eps_target.float() - eps_anchor_frozen.detach().float()) ** 2).mean()


def negative_guidance_target(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's target: eps*(x_t,t,empty) - eta * (eps*(x_t,t,c) - eps*(x_t,t,empty)), both from the frozen model."""
    return eps_uncond - eta * (eps_cond - eps_uncond)


def cip_penalty(params: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concept Influence Penalty: sum |m * theta|, a differentiable surrogate for the count
    of high-influence parameters."""
    return sum((expand_mask(mask[k], p) * p).abs().sum() for k, p in params.items())


def csr_penalty(eps_target: torch.Tensor, params: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concept Sensitivity Reduction: || m * grad_theta ||eps(x_t,t,c_target)||^2 ||^2.

    Its gradient is a Hessian-vector product, obtained by double backprop (create_graph).
    """
    names = list(params)
    grads = torch.autograd.grad((eps_target**2).sum(), [params[k] for k in names], create_graph=True)
    return sum(((expand_mask(mask[k], g) * g) ** 2).sum() for k, g in zip(names, grads))
