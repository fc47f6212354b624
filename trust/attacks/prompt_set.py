"""Prompt-set attack: generate every prompt of a set in the I2P CSV layout and detect.

Columns: `prompt`, `evaluation_seed`, `evaluation_guidance`, optional category columns
(`categories`, or any other: kept as text). No optimisation: its ASR is its pre-ASR.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import BaseModel

from trust.attacks.base import Attack, AttackPrompt, AttackTarget, PromptOutcome

REQUIRED = ("prompt", "evaluation_seed", "evaluation_guidance")


def load_prompt_set(path: Path | str, limit: int | None = None) -> list[AttackPrompt]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt set {path} not found; give a CSV in the I2P layout ({', '.join(REQUIRED)})")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the I2P layout needs {list(REQUIRED)}")
        rows = []
        for n, row in enumerate(reader, start=2):
            try:
                seed, guidance = int(float(row["evaluation_seed"])), float(row["evaluation_guidance"])
            except (TypeError, ValueError):
                raise ValueError(f"{path} line {n}: evaluation_seed must be an integer and evaluation_guidance "
                                 f"a number, got {row['evaluation_seed']!r}, {row['evaluation_guidance']!r}") from None
            if not (row["prompt"] or "").strip():
                raise ValueError(f"{path} line {n}: empty prompt")
            rows.append(AttackPrompt(row["prompt"].strip(), seed, guidance, (row.get("categories") or "").strip()))
    return rows[:limit] if limit is not None else rows


class PromptSetParams(BaseModel):
    pass


class PromptSetAttack(Attack):
    name = "prompt_set"

    @classmethod
    def default_params(cls) -> BaseModel:
        return PromptSetParams()

    def attack_one(self, target: AttackTarget, ap: AttackPrompt, index: int) -> PromptOutcome:
        return PromptOutcome(ap.prompt, target.seeds(ap), ap.guidance, detected_no_attack=False)
