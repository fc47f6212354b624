"""Sampling batches sized for memory (trust/models/parts.py `sample_batch`, trust/sampling.py):
64 of the world's 16x16 latents, four 64x64 SD latents, `model.sample_batch` when given; the
split changes no image."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from trust.models.parts import DiffusionParts
from trust.sampling import generate


def _parts_of_size(sample_size: int, batch_images=None) -> DiffusionParts:
    unet = SimpleNamespace(config=SimpleNamespace(sample_size=sample_size))
    return DiffusionParts(None, None, unet, None, None, kind="sd", batch_images=batch_images)


def test_the_batch_is_sized_from_the_latent_area_unless_given():
    assert _parts_of_size(16).sample_batch == 64  # the world (16 px, identity VAE)
    assert _parts_of_size(64).sample_batch == 4  # SD v1.4 at 512 px: 64x64 latents
    assert _parts_of_size(128).sample_batch == 1  # larger latents: one at a time, never zero
    assert _parts_of_size(64, batch_images=2).sample_batch == 2


def test_generation_batches_at_most_sample_batch_images_and_the_images_do_not_change(world_tokenizer):
    from tiny_models import tiny_sd_parts

    parts = tiny_sd_parts(world_tokenizer)
    prompts, seeds = ["a red circle", "a blue square"] * 3, list(range(6))
    whole = generate(parts, prompts, seeds, steps=2, guidance=4.0)
    small = copy.copy(parts)
    small.batch_images = 2
    sizes = []
    hook = small.unet.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    try:
        split = generate(small, prompts, seeds, steps=2, guidance=4.0, batch_size=64)  # the caller's cap is larger
    finally:
        hook.remove()
    assert set(sizes) == {2 * 2}  # two images a batch, doubled by classifier-free guidance
    assert torch.allclose(whole, split, atol=1e-5)
    capped = []
    hook = parts.unet.register_forward_pre_hook(lambda mod, args: capped.append(args[0].shape[0]))
    try:
        generate(parts, prompts, seeds, steps=1, guidance=4.0, batch_size=3)  # a shard smaller than sample_batch
    finally:
        hook.remove()
    assert set(capped) == {3 * 2}
