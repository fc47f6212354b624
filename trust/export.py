"""`trust export MODEL@ALIAS`: a registered version as a plain model folder, for where users work.

The version is rebuilt the way `trust load` rebuilds it (package checked against the registry's
hashes, the delta refused on any other base) and saved with every component in its own
diffusers / transformers format, weights as safetensors. For a Stable Diffusion base the folder is
a standard `StableDiffusionPipeline` folder: `StableDiffusionPipeline.from_pretrained(folder)`
loads the erased model with nothing of this project installed. For the built-in world it is a
world model folder (`trust.models.load_model`). `trust_export.json` records what was exported
(reference, version, package hash, base and tuned fingerprints) and the version's model card is
copied as `README.md`, so the folder carries its lineage.

No method here trains a LoRA (every delta is a dense difference of the tuned rows), so there is no
peft adapter to export; the full weights are the export.
"""

from __future__ import annotations

import shutil
from pathlib import Path

EXPORT_RECORD = "trust_export.json"


def export_registered(ref: str, out: Path, device: str = "cpu", overwrite: bool = False) -> dict:
    """Write `ref` (MODEL@ALIAS or MODEL/VERSION) to `out`; refuses an existing non-empty `out`
    unless `overwrite`. The folder appears whole or not at all."""
    from trust.models.loading import save_model
    from trust.registry import HASH_TAG, open_registered
    from trust.utils.fs import staged_dir
    from trust.utils.safetensors_io import write_json

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    parts, mv, package, spec = open_registered(ref, device, "export it")
    record = {"ref": ref, "model_name": mv.name, "version": int(mv.version), "aliases": sorted(mv.aliases),
              "package_sha256": (mv.tags or {}).get(HASH_TAG), "kind": parts.kind, "base_model": spec.get("base_model"),
              "base_fingerprint": spec.get("base_fingerprint"), "method": spec.get("method"), "tuned_fingerprint": parts.fingerprint()}
    with staged_dir(out) as tmp:
        save_model(parts, tmp)
        if (package / "model_card.md").is_file():
            shutil.copy2(package / "model_card.md", tmp / "README.md")
        write_json(record, tmp / EXPORT_RECORD)
    return record | {"folder": str(out)}
