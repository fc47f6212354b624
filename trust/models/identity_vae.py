"""A pixel-space stand-in for SD's AutoencoderKL: encode and decode are the identity.

It carries the config fields `StableDiffusionPipeline` reads (`scaling_factor`,
`block_out_channels` for the scale factor), so the unmodified diffusers pipeline runs a
pixel-space model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


@dataclass
class _Latents:
    latent_dist: "_Dist"


@dataclass
class _Dist:
    mean: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class _Decoded:
    sample: torch.Tensor


class IdentityVAE(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, channels: int = 3, scaling_factor: float = 1.0, block_out_channels: tuple[int, ...] = (3,)):
        super().__init__()
        # A parameter-free module has no dtype/device; a zero-size buffer gives it both.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        out = _Latents(_Dist(x))
        return out if return_dict else (out.latent_dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        return _Decoded(z) if return_dict else (z,)
