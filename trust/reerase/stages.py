"""Library stages (`trust.stages.<stage>.run(params, folder)`) run in a re-erasure's workspace."""

from __future__ import annotations

import importlib
from pathlib import Path

from trust.config import Params
from trust.reerase.prompts import force_prompts


def run_stage(stage: str, params: Params, folder: Path):
    """`trust.stages.<stage>.run(params, folder)`: the stage's whole result (metrics, counts, ...)."""
    return importlib.import_module(f"trust.stages.{stage}").run(params, folder)


def erase_prompts(params: Params, folder: Path, forced: list[str]) -> dict:
    """The prompts stage in `folder`, then the successful prompts `forced` into its forget set."""
    counts = run_stage("prompts", params, folder)
    return counts | force_prompts(folder, params, forced)
