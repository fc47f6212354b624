"""The evaluate stage's numbers on disk: headline numbers in `metrics/evaluate.json` (a DVC metric, so
`dvc exp show` lists target rates, kept-concept rates, ASR per attack and fidelity, not hundreds of
per-prompt columns), everything else in `outputs/evaluate/details.json` (per-attack details, every
attack outcome, the settings). `read` gives the whole dict back, as the stage returned it."""

from __future__ import annotations

import json
from pathlib import Path

from trust.stages import paths

DETAIL_KEYS = ("asr_details", "attacks", "settings")


def headline(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in DETAIL_KEYS}


def details(metrics: dict) -> dict:
    return {k: metrics[k] for k in DETAIL_KEYS if k in metrics}


def read(root: Path) -> dict:
    """metrics/evaluate.json with outputs/evaluate/details.json merged in (when it exists)."""
    root = Path(root)
    out = json.loads((root / paths.EVALUATE_METRICS).read_text())
    if (root / paths.EVALUATE_DETAILS).is_file():
        out.update(json.loads((root / paths.EVALUATE_DETAILS).read_text()))
    return out
