"""`trust prompts`: expand the concept block into train/eval prompt sets."""

from __future__ import annotations

import json
from pathlib import Path

from trust.concepts import SPLITS, build_run_sets
from trust.config import Params
from trust.stages import paths
from trust.tracking import stage_run
from trust.utils.safetensors_io import write_json


def run(params: Params, root: Path) -> dict:
    sets = build_run_sets(params.concepts, params.prompts, world=params.uses_world)
    counts = {f"{role}_{split}": len(sets[role][split]) for role in ("target", "preserve") for split in SPLITS}
    section = {"concept": params.model_dump(mode="json")["concept"], "prompts": params.prompts.model_dump(mode="json")}
    with stage_run("prompts", section, root) as run_:
        write_json(sets, root / paths.PROMPTS)
        write_json(counts, root / paths.METRICS / "prompts.json")
        run_.log_metrics(counts)
        run_.log_artifact(root / paths.PROMPTS)
        rows = [{"role": role, "split": split, "prompt": r["prompt"], "anchor": r.get("anchor") or ""}
                for role in ("target", "preserve") for split in SPLITS for r in sets[role][split]]
        run_.log_dataset(f"prompts:{params.concept_name}", rows, root / paths.PROMPTS, "training")
    return counts


def load(root: Path) -> dict:
    path = root / paths.PROMPTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `trust prompts` (or `trust run --only prompts`) first")
    return json.loads(path.read_text())
