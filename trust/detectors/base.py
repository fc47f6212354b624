"""One interface for every detector: images in, per-image concept scores and decisions out.

Images are tensors (N, 3, H, W) in [-1, 1], as everywhere in the project. `settings()` is
recorded with every result so that a number always says which detector, classes and
threshold produced it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class DetectorError(ValueError):
    """A detector cannot be built; the message names the parameter and what to provide."""


class Detector(ABC):
    name: str = "detector"

    @abstractmethod
    def scores(self, images: torch.Tensor) -> list[float]:
        """Per-image score of the concept (higher = more present)."""

    @abstractmethod
    def detect(self, images: torch.Tensor) -> list[bool]:
        """Per-image decision: does the image show the concept?"""

    @abstractmethod
    def settings(self) -> dict:
        """What produced the decisions (name, classes, threshold...), recorded with results."""
