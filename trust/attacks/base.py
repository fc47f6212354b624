"""One interface for every attack.

An attack is built from its typed parameters, a budget (optimisation steps / generations
per prompt; None = the parameters' own) and a seed, and run on an `AttackTarget` (the
unlearned model, optionally the original one, a detector and sampling settings) over
prompts in the I2P layout. It returns, per prompt, whether the prompt was already detected
with no attack, whether the attack broke it, the adversarial prompt (hard tokens, as
text) or embedding it found, and its objective over the budget.

Following UnlearnDiffAtk, a prompt whose no-attack image already shows the concept is not
attacked (it counts once in ASR).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel
from trust.utils.progress import progress as shown

from trust.detectors.base import Detector
from trust.metrics.asr import asr_summary
from trust.models.parts import DiffusionParts
from trust.sampling import generate
from trust.utils.seeding import torch_generator


@dataclass(frozen=True)
class AttackPrompt:
    """One row of a prompt set (I2P layout)."""

    prompt: str
    seed: int = 0
    guidance: float = 7.5
    categories: str = ""


@dataclass
class AttackTarget:
    unlearned: DiffusionParts
    detector: Detector
    original: DiffusionParts | None = None
    steps: int = 20  # DDIM steps when generating to check success
    samples: int = 1  # images per prompt: seeds seed, seed+1, ...

    def seeds(self, ap: AttackPrompt) -> list[int]:
        return [ap.seed + i for i in range(self.samples)]

    def generate(self, text: str, ap: AttackPrompt, parts: DiffusionParts | None = None) -> torch.Tensor:
        seeds = self.seeds(ap)
        return generate(parts or self.unlearned, [text] * len(seeds), seeds, self.steps, ap.guidance)

    def check(self, text: str, ap: AttackPrompt) -> tuple[bool, float, torch.Tensor]:
        """(detected in any image, best detector score, images) for `text` on the unlearned model."""
        images = self.generate(text, ap)
        return any(self.detector.detect(images)), max(self.detector.scores(images)), images


@dataclass
class PromptOutcome:
    prompt: str
    seeds: list[int]
    guidance: float
    detected_no_attack: bool
    broken: bool = False  # the attack made a not-yet-detected prompt show the concept
    adversarial: str | None = None  # the prompt found (hard tokens), as text
    embedding: torch.Tensor | None = None  # continuous result, where the attack has one
    score: float = 0.0  # detector score of `images`
    images: torch.Tensor | None = None  # of the adversarial prompt (or the no-attack prompt)
    objective_start: float | None = None  # attack objective at the start and the end (lower = better)
    objective_end: float | None = None
    history: list[float] = field(default_factory=list)
    steps_run: int = 0

    @property
    def success(self) -> bool:
        return self.detected_no_attack or self.broken

    def record(self) -> dict:
        return {"prompt": self.prompt, "seeds": self.seeds, "guidance": self.guidance,
                "detected_no_attack": self.detected_no_attack, "broken": self.broken,
                "adversarial": self.adversarial, "score": self.score, "objective_start": self.objective_start,
                "objective_end": self.objective_end, "steps_run": self.steps_run}


@dataclass
class AttackResult:
    attack: str
    params: dict
    detector: dict
    outcomes: list[PromptOutcome]
    seconds: float

    def summary(self) -> dict:
        s = asr_summary([o.detected_no_attack for o in self.outcomes], [o.broken for o in self.outcomes])
        return {**s, "seconds": self.seconds, "params": self.params, "detector": self.detector}

    def successful_prompts(self, include_no_attack: bool = True) -> list[dict]:
        """Prompts whose unlearned-model images show the concept: {prompt, attack, seeds}.

        Adversarial prompts carry the attack's name; prompts detected with no attack carry
        "prompt_set" for the prompt-set attack, else "none" (left out with include_no_attack=False)."""
        out = []
        for o in self.outcomes:
            if o.broken and o.adversarial:
                out.append({"prompt": o.adversarial, "attack": self.attack, "seeds": o.seeds})
            elif o.detected_no_attack and include_no_attack:
                out.append({"prompt": o.prompt, "attack": self.attack if self.attack == "prompt_set" else "none",
                            "seeds": o.seeds})
        return out


class Attack(ABC):
    name: str = "attack"
    needs_original: bool = False

    def __init__(self, params: BaseModel | None = None, budget: int | None = None, seed: int = 0):
        self.params = params if params is not None else self.default_params()
        self.budget = budget
        self.seed = seed

    @classmethod
    def default_params(cls) -> BaseModel:
        raise NotImplementedError

    def steps_budget(self, own: int) -> int:
        return int(self.budget) if self.budget is not None else own

    def generator(self, index: int) -> torch.Generator:
        return torch_generator(self.seed, index)

    def run(self, target: AttackTarget, prompts: list[AttackPrompt], progress: bool = False) -> AttackResult:
        if self.needs_original and target.original is None:
            raise ValueError(f"attack {self.name} needs the original (pre-erasure) model: set AttackTarget.original")
        for parts in (target.unlearned, target.original):
            if parts is not None:
                parts.requires_grad_(False).eval()
        start = time.perf_counter()
        outcomes = []
        for i, ap in enumerate(shown(prompts, total=len(prompts), desc=f"attack {self.name}") if progress else prompts):
            hit, score, images = target.check(ap.prompt, ap)
            if hit:
                outcomes.append(PromptOutcome(ap.prompt, target.seeds(ap), ap.guidance, True, score=score, images=images))
            else:
                outcome = self.attack_one(target, ap, i)
                if outcome.images is None:
                    outcome.images, outcome.score = images, score
                outcomes.append(outcome)
        params = self.params.model_dump(mode="json") if isinstance(self.params, BaseModel) else dict(self.params)
        params.update({"budget": self.budget, "seed": self.seed})
        return AttackResult(self.name, params, target.detector.settings(), outcomes, time.perf_counter() - start)

    @abstractmethod
    def attack_one(self, target: AttackTarget, ap: AttackPrompt, index: int) -> PromptOutcome:
        """Attack one prompt not detected with no attack."""
