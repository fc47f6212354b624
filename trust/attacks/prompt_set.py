"""Prompt-set attack: generate every prompt of a set in the I2P CSV layout and detect.

Columns: `prompt`, `evaluation_seed`, `evaluation_guidance`, optional category columns
(`categories`, or any other: kept as text). No optimisation: its ASR is its pre-ASR.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from trust.attacks.base import Attack, AttackPrompt, AttackTarget, PromptOutcome
from trust.utils.prompt_csv import REQUIRED, read_prompt_set  # noqa: F401 (REQUIRED: the layout, re-exported)


def load_prompt_set(path: Path | str, limit: int | None = None) -> list[AttackPrompt]:
    """The prompt set at `path` (trust/utils/prompt_csv.py raises PromptSetError, naming the line)."""
    rows = [AttackPrompt(*r) for r in read_prompt_set(path)]
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
