"""ConceptPrune's knobs (`finetune.method: {name: conceptprune, ...}`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from trust.methods.config import MethodConfig


class ConceptPruneConfig(MethodConfig):
    """Training-free pruning of ff.net.2 weights with Wanda scores (ends after its first step)."""

    name: Literal["conceptprune"] = "conceptprune"
    fraction: float = Field(0.02, gt=0, le=1, description="share of each ff.net.2 row's weights pruned per timestep "
                                                          "(top Wanda scores among those where target > base); paper "
                                                          "range 0.01-0.03")
    timesteps: int = Field(10, ge=1, description="union over the first N DDIM timesteps")
    ddim_steps: int = Field(50, ge=1, description="DDIM schedule the timesteps come from")
    guidance: float = Field(4.0, ge=1.0, description="guidance of the sampled trajectory")

    implementation: ClassVar[str] = "trust.methods.conceptprune.method:ConceptPruneMethod"
    moved_from: ClassVar[dict[str, str]] = {"conceptprune_fraction": "fraction", "conceptprune_timesteps": "timesteps",
                                            "conceptprune_ddim_steps": "ddim_steps",
                                            "conceptprune_guidance": "guidance"}

    @model_validator(mode="after")
    def _timesteps_fit(self) -> "ConceptPruneConfig":
        if self.timesteps > self.ddim_steps:
            raise ValueError(f"timesteps ({self.timesteps}) must be <= ddim_steps ({self.ddim_steps})")
        return self
