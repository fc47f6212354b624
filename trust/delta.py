"""The tuned-weights delta: only the UNet tensors a method changed, as safetensors.

Together with the base model (checked by fingerprint) it rebuilds the tuned pipeline, so
what is registered is small and its lineage to the base is explicit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trust.models.parts import DiffusionParts
from trust.utils.safetensors_io import load_tensors, save_tensors

FORMAT = "trust-delta-v1"


class NonFiniteError(ValueError):
    """Weights or a loss that are no longer finite numbers (inf or NaN): a delta made of them is
    refused, written or read, so it can never be evaluated or registered."""


def non_finite(tensors: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """(how many values are inf or NaN, the names of the tensors holding them)."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in tensors.items() if v.is_floating_point()}
    return sum(bad.values()), [k for k, n in bad.items() if n]


def changed_tensors(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if base.keys() != tuned.keys():
        raise ValueError("base and tuned UNet have different parameter names; a delta needs the same architecture")
    return {k: v for k, v in tuned.items() if not torch.equal(base[k], v)}


def save_delta(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], path: Path, meta: dict) -> dict:
    """Write the tensors of `tuned` (a UNet state dict) that differ from `base`; returns a summary."""
    delta = changed_tensors(base, tuned)
    n, where = non_finite(delta)
    if n:
        raise NonFiniteError(f"{n} of the tuned weights are inf or NaN (in {len(where)} tensor(s), e.g. {where[0]}); "
                             f"the delta {path} was not written. Training diverged: lower finetune.lr")
    metadata = {"format": FORMAT, **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()}}
    save_tensors({f"unet.{k}": v for k, v in delta.items()}, path, metadata=metadata)
    return {"tensors": len(delta), "parameters": int(sum(v.numel() for v in delta.values()))}


def read_delta(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a trust weights delta (format {metadata.get('format')!r}, expected {FORMAT!r})")
    return load_tensors(path), metadata


def apply_delta(parts: DiffusionParts, path: Path, check_fingerprint: bool = True) -> DiffusionParts:
    """Load the delta into `parts.unet` in place. Refuses a delta made from another base model."""
    tensors, metadata = read_delta(path)
    n, where = non_finite(tensors)
    if n:
        raise NonFiniteError(f"{path} holds {n} inf or NaN values (in {', '.join(where[:3])}); it cannot be applied")
    want = metadata.get("base_fingerprint")
    if check_fingerprint and want and want != parts.fingerprint():
        raise ValueError(
            f"{path} was made from base model {want}, but the loaded base is {parts.fingerprint()}; "
            "point model.base at the model the delta was trained from"
        )
    state = parts.unet.state_dict()
    unknown = [k for k in tensors if k.removeprefix("unet.") not in state]
    if unknown:
        raise ValueError(f"{path} holds tensors the UNet does not have: {unknown[:3]}")
    with torch.no_grad():
        for k, v in tensors.items():
            state[k.removeprefix("unet.")].copy_(v)
    return parts
