"""Batches of procedural scenes, keyed by (seed, index) so any batch can be regenerated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trust.utils.seeding import numpy_rng
from trust.world.captions import caption
from trust.world.scenes import Scene, random_scene, render, to_model_range


@dataclass
class Batch:
    images: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    captions: list[str]
    scenes: list[Scene]


def scene_batch(seed: int, index: int, size: int, image_size: int, p_empty: float = 0.05) -> Batch:
    rng = numpy_rng(seed, index)
    scenes = [random_scene(rng, empty=bool(rng.random() < p_empty)) for _ in range(size)]
    captions = [caption(s, rng) for s in scenes]
    images = np.stack([render(s, image_size) for s in scenes])
    return Batch(torch.from_numpy(to_model_range(images)), captions, scenes)
