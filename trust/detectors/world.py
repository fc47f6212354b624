"""The built-in world's concept classifier as a detector (trust/world/classifier.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from trust.detectors.base import Detector, DetectorError
from trust.world.classifier import HEADS, ConceptClassifier


class WorldDetector(Detector):
    """An image shows the concept when every head in `want` has the wanted label as argmax.

    Same rule as the evaluate stage's no-attack part. Score = P(all wanted labels)."""

    name = "world_classifier"

    def __init__(self, classifier: ConceptClassifier, want: dict[str, str]):
        for h, v in want.items():
            if h not in HEADS or v not in HEADS[h]:
                raise ValueError(f"concept.detect {h}={v!r}: unknown head or label; heads and labels: {HEADS}")
        self.classifier, self.want = classifier.eval(), dict(want)

    @classmethod
    def load(cls, folder: Path, want: dict[str, str]) -> "WorldDetector":
        return cls(ConceptClassifier.load(folder), want)

    @classmethod
    def from_params(cls, params, root: Path, *, classifier_dir: Path | None = None,
                    want: dict[str, str] | None = None, **_) -> "WorldDetector":
        if classifier_dir is None or want is None:
            raise DetectorError("evaluate.detector.kind: world needs world.classifier_dir and concept.detect")
        return cls.load(root / classifier_dir, want)

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> list[float]:
        return self.classifier.concept_probability(images.float(), **self.want).tolist()

    def detect(self, images: torch.Tensor) -> list[bool]:
        labels = self.classifier.predict(images.float())
        return [all(labels[h][i] == v for h, v in self.want.items()) for i in range(images.shape[0])]

    def settings(self) -> dict:
        return {"detector": self.name, "detect": self.want, "rule": "argmax of every wanted head equals the label"}
