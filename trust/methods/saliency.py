"""Concept-neuron localisation: gradient saliency over cross-attention projections.

A neuron is one output row of `attn2.to_q/to_k/to_v` (or a single weight, element
granularity). Its saliency is the mean |gradient| of a concept score over its row; scores
are z-normalised per layer (or globally) and neurons with z > xi form the mask.
"""

from __future__ import annotations

import torch
from torch import nn


def cross_attention_params(unet: nn.Module, modules: list[str]) -> dict[str, nn.Parameter]:
    """UNet parameters of the cross-attention projections, by name, in a stable order."""
    out = {}
    for name, p in unet.named_parameters():
        parts = name.split(".")
        if len(parts) >= 3 and parts[-3] == "attn2" and parts[-2] in modules and parts[-1] == "weight":
            out[name] = p
    if not out:
        raise ValueError(f"the UNet has no cross-attention (attn2) projections among {modules}")
    return out


def neuron_scores(grads: dict[str, torch.Tensor], granularity: str) -> dict[str, torch.Tensor]:
    if granularity == "row":
        return {k: g.abs().mean(dim=1) for k, g in grads.items()}
    return {k: g.abs() for k, g in grads.items()}


def zscore_mask(scores: dict[str, torch.Tensor], xi: float, normalise: str) -> dict[str, torch.Tensor]:
    """1.0 where the z-score of a neuron's saliency exceeds xi, else 0.0."""
    if normalise == "global":
        flat = torch.cat([s.flatten() for s in scores.values()])
        mu, sd = flat.mean(), flat.std().clamp_min(1e-12)
        return {k: ((s - mu) / sd > xi).float() for k, s in scores.items()}
    return {k: ((s - s.mean()) / s.std().clamp_min(1e-12) > xi).float() for k, s in scores.items()}


def expand_mask(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Element masks as they are; row masks (one value per output row) broadcast over the rest."""
    if mask.shape == weight.shape:
        return mask
    return mask.reshape(-1, *([1] * (weight.dim() - 1))).expand_as(weight)


def mask_size(mask: dict[str, torch.Tensor]) -> int:
    return int(sum(m.sum().item() for m in mask.values()))


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    inter = sum(int((a[k].bool() & b[k].bool()).sum()) for k in a)
    union = sum(int((a[k].bool() | b[k].bool()).sum()) for k in a)
    return inter / union if union else 1.0
