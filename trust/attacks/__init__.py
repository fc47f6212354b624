"""Attacks on erased models (docs/methods.md, Attacks): one interface (`Attack`), four kinds.

* `PromptSetAttack` — prompts from a CSV in the I2P layout.
* `UnlearnDiffAtk` — adversarial prefix tokens, relaxed one-hot, the unlearned model's own loss.
* `P4D` — match the unlearned model's noise prediction to the original model's.
* `RingABell` — concept vector + genetic token search, text encoder only.
"""

from __future__ import annotations

from pydantic import BaseModel

from trust.attacks.base import Attack, AttackPrompt, AttackResult, AttackTarget, PromptOutcome
from trust.attacks.p4d import P4D
from trust.attacks.prompt_set import PromptSetAttack, load_prompt_set
from trust.attacks.ringabell import RingABell
from trust.attacks.unlearndiffatk import UnlearnDiffAtk
from trust.utils.registry import Registry

# name (evaluate.attacks.run, plus the prompt set that always runs) -> Attack class; an attack's
# own parameters are the AttackParams field of the same name (evaluate.attacks.<name>).
ATTACKS: Registry[type[Attack]] = Registry("attack", "evaluate.attacks.run")
ATTACKS.add("prompt_set", PromptSetAttack)
ATTACKS.add("unlearndiffatk", UnlearnDiffAtk)
ATTACKS.add("p4d", P4D)
ATTACKS.add("ringabell", RingABell)

__all__ = ["ATTACKS", "Attack", "AttackPrompt", "AttackResult", "AttackTarget", "PromptOutcome", "P4D",
           "PromptSetAttack", "RingABell", "UnlearnDiffAtk", "build_attack", "load_prompt_set"]


def build_attack(name: str, attack_params, budget: int | None = None, seed: int | None = None, **kwargs) -> Attack:
    """From `evaluate.attacks` (AttackParams): the named attack with its own parameters."""
    cls = ATTACKS.get(name)
    own = getattr(attack_params, name, None)
    own = own if isinstance(own, BaseModel) else None
    return cls(own, budget, attack_params.seed if seed is None else seed, **kwargs)
