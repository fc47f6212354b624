"""The prompts a re-erasure adds: the evaluate stage's successful prompts, forced into the forget set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trust.concepts import anchor_for, labels_of
from trust.config import Params
from trust.stages import paths

SUCCESSFUL = paths.EVALUATE_DIR / "successful_prompts.json"


def successful_prompts(folder: Path, limit: int) -> list[dict]:
    """The evaluate stage's successful prompts in `folder` (list of {prompt, attack, seeds}), one
    row per prompt, most hits first, at most `limit`."""
    f = folder / SUCCESSFUL
    rows = json.loads(f.read_text()) if f.is_file() else []
    rows = sorted(rows, key=lambda r: -len(r.get("seeds") or []))
    seen, out = set(), []
    for r in rows:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            out.append(r)
    return out[:limit]


def force_prompts(folder: Path, params: Params, prompts: list[str]) -> dict:
    """Make every successful prompt part of the forget set (target.train), checked first by the
    fine-tuning bar (front of target.val) and measured first (front of target.eval), whatever the
    prompts stage's cap and split drew; rewrites the prompts stage's output in `folder` and returns
    the new target counts."""
    f = folder / paths.PROMPTS
    sets = json.loads(f.read_text())
    rows = {r["prompt"]: r for split in ("train", "eval") for r in sets["target"][split]}
    rng = np.random.default_rng(params.prompts.seed)
    forced = []
    for p in prompts:
        if p not in rows:
            labels = labels_of(p)
            rows[p] = {"prompt": p, "anchor": anchor_for(params.concept, labels, rng), "labels": labels}
        forced.append(rows[p])
    names = set(prompts)
    sets["target"]["train"] = [r for r in sets["target"]["train"] if r["prompt"] not in names] + forced
    sets["target"]["eval"] = forced + [r for r in sets["target"]["eval"] if r["prompt"] not in names]
    # ... and checked first by erase-to-a-bar: a repair round is not done while what broke through still does
    sets["target"]["val"] = forced + [r for r in sets["target"].get("val", []) if r["prompt"] not in names]
    sets["reerase"] = {"forced_prompts": prompts}
    f.write_text(json.dumps(sets, indent=2, sort_keys=True) + "\n")
    return {"target_train": len(sets["target"]["train"]), "target_eval": len(sets["target"]["eval"])}
