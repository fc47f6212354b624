"""The tuned-weights delta: only the UNet tensors a method changed, as safetensors.

Together with the base model (checked by fingerprint) it rebuilds the tuned pipeline, so
what is registered is small and its lineage to the base is explicit.

Format `trust-delta-v2`: a tensor whose change touches few of its rows (TRUST and SalUn train rows
of the cross-attention projections) is stored as those rows, `unet.<name>@rows` (int64 row
indices) and `unet.<name>@values` (the tuned rows), whenever that is smaller than the whole
tensor; any other changed tensor whole, `unet.<name>`. At SD size a TRUST delta is then its masked
rows, not every projection it touched. `trust-delta-v1` files (whole tensors only) still read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trust.models.parts import DiffusionParts
from trust.utils.safetensors_io import load_tensors, save_tensors

FORMAT = "trust-delta-v2"
READS = ("trust-delta-v1", FORMAT)  # v1: whole tensors only
ROWS, VALUES = "@rows", "@values"


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
    stored = {}
    for k, v in delta.items():
        rows = _changed_rows(base[k], v)
        if rows is None:
            stored[f"unet.{k}"] = v
        else:
            stored[f"unet.{k}{ROWS}"], stored[f"unet.{k}{VALUES}"] = rows, v[rows].contiguous()
    save_tensors(stored, path, metadata=metadata)
    return {"tensors": len(delta), "parameters": int(sum(v.numel() for k, v in stored.items() if not k.endswith(ROWS))),
            "row_tensors": sum(k.endswith(ROWS) for k in stored)}


def _changed_rows(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor | None:
    """The indices of the rows (first dimension) that changed, when storing only them is smaller."""
    if tuned.dim() < 2:
        return None
    rows = torch.nonzero((tuned != base).reshape(tuned.shape[0], -1).any(dim=1)).flatten()
    row_size = tuned[0].numel()
    return rows if rows.numel() * (row_size + 1) < tuned.numel() else None


def read_delta(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") not in READS:
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
    name = lambda k: k.removeprefix("unet.").removesuffix(ROWS).removesuffix(VALUES)  # noqa: E731
    unknown = [k for k in tensors if name(k) not in state]
    if unknown:
        raise ValueError(f"{path} holds tensors the UNet does not have: {unknown[:3]}")
    for n in {name(k) for k in tensors if k.endswith((ROWS, VALUES))}:  # each rows/values pair fits its tensor
        rows, values, target = tensors.get(f"unet.{n}{ROWS}"), tensors.get(f"unet.{n}{VALUES}"), state[n]
        if (rows is None or values is None or rows.dim() != 1 or rows.dtype != torch.int64
                or values.shape != (rows.numel(), *target.shape[1:])
                or (rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= target.shape[0]))):
            raise ValueError(f"{path}: {n}'s stored rows do not fit the UNet's tensor {tuple(target.shape)}: "
                             "the delta is damaged")
    with torch.no_grad():
        for k, v in tensors.items():
            if k.endswith(VALUES):
                continue
            if k.endswith(ROWS):
                state[name(k)][v] = tensors[f"unet.{name(k)}{VALUES}"].to(state[name(k)].dtype)
            else:
                state[name(k)].copy_(v)
    return parts
