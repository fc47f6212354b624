"""Procedural scenes: one coloured shape on a plain or striped grey background.

Drawn with 4x supersampling so edges are anti-aliased; all randomness comes from the
numpy Generator passed in, so the same seed gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trust.world.vocabulary import BACKGROUNDS, COLOUR_RGB, COLOURS, SHAPES

SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """What an image shows. `shape`/`colour` are None for an empty background."""

    shape: str | None
    colour: str | None
    background: str
    cx: float  # centre, in units of the image side
    cy: float
    radius: float
    angle: float  # rotation of the shape, radians (0 for generated scenes)
    bg_level: float
    stripe_phase: float


def random_scene(rng: np.random.Generator, *, empty: bool = False) -> Scene:
    # Large enough that shapes differ clearly at the UNet's 8x8 cross-attention level; an
    # earlier 0.22-0.34 range with rotation jitter left squares indistinguishable from discs.
    radius = float(rng.uniform(0.28, 0.40))
    margin = radius * 0.95
    return Scene(
        shape=None if empty else SHAPES[rng.integers(len(SHAPES))],
        colour=None if empty else COLOURS[rng.integers(len(COLOURS))],
        background=BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        cx=float(rng.uniform(margin, 1 - margin)),
        cy=float(rng.uniform(margin, 1 - margin)),
        radius=radius,
        angle=0.0,
        bg_level=float(rng.uniform(0.35, 0.6)),
        stripe_phase=float(rng.uniform(0, 1)),
    )


def _shape_mask(scene: Scene, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of the shape on a grid of coordinates (u right, v down) in [0, 1]."""
    du, dv = u - scene.cx, v - scene.cy
    c, s = np.cos(scene.angle), np.sin(scene.angle)
    x, y = (c * du + s * dv) / scene.radius, (-s * du + c * dv) / scene.radius
    if scene.shape == "circle":
        return x * x + y * y <= 1.0
    if scene.shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.8
    if scene.shape == "triangle":
        # Upward triangle with apex at y=-1 and base at y=+0.75.
        return (y <= 0.75) & (np.abs(x) <= (y + 1.0) / 1.75)
    if scene.shape == "cross":
        arm = 0.34
        return ((np.abs(x) <= arm) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= arm) & (np.abs(x) <= 1.0))
    raise ValueError(f"unknown shape {scene.shape!r}; expected one of {SHAPES}")


def render(scene: Scene, size: int) -> np.ndarray:
    """Render to a float32 array (size, size, 3) in [0, 1]."""
    n = size * SUPERSAMPLE
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n
    u, v = np.meshgrid(grid, grid)  # u: column, v: row
    img = np.empty((n, n, 3), dtype=np.float32)
    if scene.background == "striped":
        # Diagonal stripes, four periods across the image, two grey levels.
        stripes = np.floor((u + v) * 4 + scene.stripe_phase) % 2
        level = scene.bg_level + 0.25 * (stripes - 0.5)
    else:
        level = np.full((n, n), scene.bg_level, dtype=np.float32)
    img[:] = level[..., None]
    if scene.shape is not None:
        mask = _shape_mask(scene, u, v)
        img[mask] = COLOUR_RGB[scene.colour]
    # Box-filter downsampling = anti-aliasing.
    return img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))


def to_model_range(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) in [0, 1] -> (N, 3, H, W) in [-1, 1], the diffusion model's pixel range."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2) * 2.0 - 1.0, dtype=np.float32)


def from_model_range(x: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = np.clip((x.transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0)
    return (x * 255.0 + 0.5).astype(np.uint8)
