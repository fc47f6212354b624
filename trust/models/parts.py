"""`DiffusionParts`: the one interface every method uses to reach a text-to-image model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from trust.utils.model_kind import KIND_SD, KIND_WORLD  # noqa: F401 (re-exported; defined in trust/utils/model_kind.py)

DECODE_LATENT_PIXELS = 2 * 64 * 64  # latent pixels per VAE decode pass (DiffusionParts.decode_latents)
# latent pixels per UNet sampling batch (DiffusionParts.sample_batch): 64 of the world's 16x16 latents (its
# measured batched-forward limit), four 64x64 SD ones (a batch of 64 at 512 px needs tens of GB)
SAMPLE_LATENT_PIXELS = 64 * 16 * 16


@dataclass
class DiffusionParts:
    """Tokenizer, text encoder, UNet, training noise scheduler and a VAE with encode/decode.

    For SD the VAE is `AutoencoderKL`; for the pixel-space world it is `IdentityVAE`.
    Images are tensors (N, 3, H, W) in [-1, 1] everywhere.
    """

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    vae: torch.nn.Module
    kind: str
    source: Path | None = None
    extra: dict = field(default_factory=dict)  # e.g. the world's image size
    batch_images: int | None = None  # model.sample_batch: images per sampling batch; None: sized from the latents
    # model.dtype: what forwards compute in (trust/models/precision.py); the weights here stay float32
    compute_dtype: torch.dtype = torch.float32

    def autocast(self):
        """The context every forward of these parts runs in (model.dtype; nothing for float32)."""
        from trust.models.precision import autocast

        return autocast(self.unet.device, self.compute_dtype)

    @property
    def sample_batch(self) -> int:
        """Images per UNet batch when sampling (every generation: references, checks, attacks,
        evaluation): `model.sample_batch`, or as many as SAMPLE_LATENT_PIXELS latent pixels hold."""
        if self.batch_images is not None:
            return self.batch_images
        s = self.unet.config.sample_size
        return max(1, SAMPLE_LATENT_PIXELS // (s * s))

    # -- geometry -----------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.unet.config.sample_size
        return (self.unet.config.in_channels, s, s)

    # -- text ---------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.text_encoder.device)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Per-token hidden states, the UNet's cross-attention context."""
        return self.text_encoder(self.tokenize(prompts))[0]

    # -- images <-> latents -----------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode(images).latent_dist.mode()
        return latents * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        # A VAE decode's activations grow with image area (one 512 px SD image peaks at ~1.7 GB), so
        # a batch is decoded a few images at a time: DECODE_LATENT_PIXELS latent pixels a pass (two
        # 64x64 SD latents; the world's 16x16 ones 32 at a time). Each image decodes on its own, so
        # the split changes no image.
        n = max(1, DECODE_LATENT_PIXELS // (latents.shape[-1] * latents.shape[-2]))
        sf = self.vae.config.scaling_factor
        return torch.cat([self.vae.decode(chunk / sf, return_dict=False)[0] for chunk in latents.split(n)])

    # -- sampling -------------------------------------------------------------------
    def sampling_scheduler(self) -> DDIMScheduler:
        return DDIMScheduler.from_config(self.scheduler.config)

    def pipeline(self) -> StableDiffusionPipeline:
        """A stock diffusers pipeline over these parts (DDIM sampler, no safety checker)."""
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.sampling_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "text_encoder": self.text_encoder, "vae": self.vae}

    def requires_grad_(self, flag: bool) -> "DiffusionParts":
        for m in self.modules().values():
            m.requires_grad_(flag)
        return self

    def eval(self) -> "DiffusionParts":
        for m in self.modules().values():
            m.eval()
        return self

    def fingerprint(self) -> str:
        """Content hash of the weights: names, dtypes, shapes and bytes, in sorted order.

        Independent of file layout or sharding, so it identifies the base model in lineage.
        """
        h = hashlib.sha256()
        for prefix, module in sorted(self.modules().items()):
            state = module.state_dict()
            for name in sorted(state):
                t = state[name].detach().cpu().contiguous()
                h.update(f"{prefix}.{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return "sha256:" + h.hexdigest()
