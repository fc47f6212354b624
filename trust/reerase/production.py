"""The production model a re-erasure starts from: pinned and checked, rebuilt, and the new
weights composed with it into one delta against the ORIGINAL base model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from trust.stages import paths

DELTA_FROM_PARENT = paths.FINETUNE_DIR / "delta_from_parent.safetensors"


def resolve_production(ref: str) -> dict:
    """Pin MODEL@ALIAS to a version and check its package against what the registry recorded
    before using it.

    Returns what the later steps need: the pinned version, its package and delta, the base
    model (and fingerprint) it was made from, the package hash and the erasure method.
    """
    from trust.delta import read_delta
    from trust.registry import DELTA, PIPELINE, resolve, verified_folder

    mv = resolve(ref)
    folder = verified_folder(mv, ref, "re-erase from it")
    spec = json.loads((folder / PIPELINE).read_text())
    _, meta = read_delta(folder / DELTA)
    return {"ref": ref, "name": mv.name, "version": int(mv.version), "pinned": f"{mv.name}/{mv.version}",
            "package": str(folder), "delta": str(folder / DELTA), "base_model": spec["base_model"],
            "base_fingerprint": spec.get("base_fingerprint"), "package_sha256": (mv.tags or {}).get("package_sha256"),
            "method": meta.get("method")}


def materialise(prod: dict, folder: Path, device: str) -> dict:
    """Rebuild the production model (base + delta) and save it as a model folder to fine-tune from."""
    from trust.models.loading import save_model
    from trust.registry import load_registered
    from trust.utils.fs import staged_dir

    parts = load_registered(prod["pinned"], device=device)
    with staged_dir(Path(folder)) as tmp:
        save_model(parts, tmp)
    return {"folder": str(folder), "fingerprint": parts.fingerprint()}


def compose_delta(prod: dict, folder: Path, device: str) -> dict:
    """Express the new weights against the ORIGINAL base: base + production delta + new delta,
    saved as one delta whose base fingerprint is the original base's (what `trust load` needs).
    The delta relative to the production model is kept as delta_from_parent.safetensors."""
    import torch

    from trust.delta import apply_delta, read_delta, save_delta
    from trust.models import load_model
    from trust.models.loading import base_unet_state

    ws = Path(folder)
    parts = load_model(prod["base_model"], device=device)
    base_fp = parts.fingerprint()
    if prod.get("base_fingerprint") and base_fp != prod["base_fingerprint"]:
        raise ValueError(f"base model {prod['base_model']} has fingerprint {base_fp}, but {prod['pinned']} was made "
                         f"from {prod['base_fingerprint']}")
    base_state = base_unet_state(parts)  # the base folder's own tensors, read when the delta is written
    apply_delta(parts, Path(prod["delta"]))
    shutil.move(ws / paths.DELTA, ws / DELTA_FROM_PARENT)
    apply_delta(parts, ws / DELTA_FROM_PARENT)  # refuses a delta not made from the materialised production model
    _, meta = read_delta(ws / DELTA_FROM_PARENT)
    with torch.no_grad():
        summary = save_delta(base_state, parts.unet.state_dict(), ws / paths.DELTA, {
            "base_fingerprint": base_fp, "method": meta.get("method"), "concept": meta.get("concept"),
            "parent_version": prod["pinned"], "parent_fingerprint": meta.get("base_fingerprint"),
            "parent_package_sha256": prod.get("package_sha256") or ""})
    return summary | {"base_fingerprint": base_fp, "parent_fingerprint": meta.get("base_fingerprint")}
