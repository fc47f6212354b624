"""One interface for every detector: images in, per-image concept scores and decisions out.

Images are tensors (N, 3, H, W) in [-1, 1], as everywhere in the project. `settings()` is
recorded with every result so that a number always says which detector, classes and
threshold produced it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch


class DetectorError(ValueError):
    """A detector cannot be built; the message names the parameter and what to provide."""


class Detector(ABC):
    name: str = "detector"

    # Not abstract: a detector made in code (a test's stand-in) needs no params; one registered
    # in DETECTORS (trust/detectors/__init__.py) must override this.
    @classmethod
    def from_params(cls, params, root: Path, *, classifier_dir: Path | None = None, want: dict[str, str] | None = None,
                    device: str = "cpu", clip_dir: Path | None = None) -> "Detector":
        """Build from `evaluate.detector` (DetectorParams) and what the stage knows: the project root
        (params paths are relative to it), the world classifier folder and the labels that mean
        'concept present' (world), the torch device, `model.clip_dir` (CLIP). Each kind takes what
        it needs; `build_detector` picks the kind through the DETECTORS registry."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from evaluate.detector: it has no from_params")

    @abstractmethod
    def scores(self, images: torch.Tensor) -> list[float]:
        """Per-image score of the concept (higher = more present)."""

    @abstractmethod
    def detect(self, images: torch.Tensor) -> list[bool]:
        """Per-image decision: does the image show the concept?"""

    @abstractmethod
    def settings(self) -> dict:
        """What produced the decisions (name, classes, threshold...), recorded with results."""
