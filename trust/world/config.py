"""The built-in world's settings (params.yaml `world.*`), torch-free so that `trust.config` loads fast."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field


class ClassifierTrainConfig(BaseModel):
    """How the world's concept classifier is trained (params.yaml `world.classifier`)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    steps: int = Field(800, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    image_size: int = Field(16, ge=8)
    width: int = Field(32, ge=4)
    p_noise: float = Field(0.1, ge=0, le=1, description="share of pure-noise images (label none everywhere)")
    p_empty: float = Field(0.1, ge=0, le=1, description="share of empty backgrounds (shape/colour none)")


class WorldTrainConfig(BaseModel):
    """How the built-in world's diffusion model is trained (params.yaml `world.train`)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0, description="seed for data, noise, timesteps and initialisation")
    steps: int = Field(1800, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    min_snr_gamma: float = Field(5.0, gt=0, description="min-SNR loss weighting")
    cfg_dropout: float = Field(0.1, ge=0, lt=1, description="share of empty captions (classifier-free guidance)")
    image_size: int = Field(16, ge=8, description="pixels per side")
    unet_channels: tuple[int, ...] = Field((32, 64, 64), min_length=2)
    text_dim: int = Field(64, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    checkpoint_every: int = Field(200, ge=1)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class FidelityConfig(BaseModel):
    """How the world's fidelity is measured (params.yaml `world.eval`)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = Field(1234, description="base of the per-image sampling seeds")
    samples_per_prompt: int = Field(8, ge=1)
    steps: int = Field(20, ge=1, description="DDIM sampling steps")
    guidance: float = Field(4.0, ge=1.0, description="classifier-free guidance scale")
    batch_size: int = Field(64, ge=1)
    bar_canonical: float = Field(0.9, ge=0, le=1, description="every shape and colour must reach this")
    bar_synonym: float = Field(0.8, ge=0, le=1, description="synonym prompts (pooled) must reach this")
