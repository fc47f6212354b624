"""What kind of model a folder holds, told apart by its marker file (torch-free, so the params
check can ask before any model loads): the one answer to "world or Stable Diffusion?"."""

from __future__ import annotations

from pathlib import Path

KIND_SD = "stable-diffusion"
KIND_WORLD = "world"
SD_INDEX = "model_index.json"  # a diffusers StableDiffusionPipeline folder
WORLD_INDEX = "trust_model.json"  # a trust world folder (its own loader: an identity VAE)


def folder_kind(path: Path) -> str | None:
    """KIND_WORLD, KIND_SD, or None when `path` is no pipeline folder (yet)."""
    path = Path(path)
    if (path / WORLD_INDEX).is_file():
        return KIND_WORLD
    if (path / SD_INDEX).is_file():
        return KIND_SD
    return None
