"""Text-to-image sampling over `DiffusionParts`: DDIM with classifier-free guidance.

Each image's starting noise comes from its own seed, so an image does not depend on the
batch it was generated in (needed for sharded evaluation and for base-vs-erased grids on
the same seeds). Matches diffusers' `StableDiffusionPipeline` given the same latents (tested).
"""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

from trust.models.parts import DiffusionParts


def initial_noise(parts: DiffusionParts, seeds: list[int]) -> torch.Tensor:
    shape = parts.latent_shape
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise)


def denoise(
    parts: DiffusionParts,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    steps: int,
    guidance: float,
) -> torch.Tensor:
    """Run the DDIM loop from `latents` (already scaled by init_noise_sigma). Differentiable."""
    sched = parts.sampling_scheduler()
    sched.set_timesteps(steps)
    x = latents
    for t in sched.timesteps:
        if guidance == 1.0:
            eps = parts.unet(sched.scale_model_input(x, t), t, encoder_hidden_states=cond).sample
        else:
            model_in = sched.scale_model_input(torch.cat([x, x]), t)
            ctx = torch.cat([uncond.expand(x.shape[0], -1, -1), cond])
            eps_u, eps_c = parts.unet(model_in, t, encoder_hidden_states=ctx).sample.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x


def generate(
    parts: DiffusionParts,
    prompts: list[str],
    seeds: list[int],
    steps: int = 20,
    guidance: float = 4.0,
    batch_size: int | None = None,
    grad: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1], image i from prompts[i] and seeds[i]. `batch_size`: at most this
    many images per UNet batch (a caller's work unit, e.g. an evaluation shard), and never more than
    `parts.sample_batch` (what memory allows; model.sample_batch)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    return _generate(parts, lambda i, j: parts.encode_text(prompts[i:j]), seeds, steps, guidance, batch_size, grad,
                     progress)


def generate_from(
    parts: DiffusionParts,
    cond: torch.Tensor,
    seeds: list[int],
    steps: int = 20,
    guidance: float = 4.0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Like `generate`, from text-encoder conditions (N, L, D) instead of prompts (an attack's
    adversarial conditions, which may be no typable prompt)."""
    if len(cond) != len(seeds):
        raise ValueError(f"got {len(cond)} conditions but {len(seeds)} seeds; give one seed per condition")
    return _generate(parts, lambda i, j: cond[i:j].to(parts.unet.device), seeds, steps, guidance, batch_size)


def _generate(parts, cond_of, seeds, steps, guidance, batch_size, grad=False, progress=False) -> torch.Tensor:
    batch_size = parts.sample_batch if batch_size is None else max(1, min(batch_size, parts.sample_batch))
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    out = []
    with ctx, parts.autocast():
        uncond = parts.encode_text([""])
        for i in tqdm(range(0, len(seeds), batch_size), desc="sampling", disable=not progress, leave=False):
            s = seeds[i : i + batch_size]
            latents = initial_noise(parts, s).to(parts.unet.device) * parts.sampling_scheduler().init_noise_sigma
            latents = denoise(parts, latents, cond_of(i, i + batch_size), uncond, steps, guidance)
            out.append(parts.decode_latents(latents).clamp(-1, 1).float())  # float32 images whatever model.dtype
    return torch.cat(out)
