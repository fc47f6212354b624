"""The built-in world's concept classifier as a detector (trust/world/classifier.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from trust.detectors.base import Detector, DetectorError
from trust.world.classifier import HEADS, ConceptClassifier


class WorldDetector(Detector):
    """An image shows the concept when every head in `want` has the wanted label as argmax.

    Same rule as the evaluate stage's no-attack part. Score = P(all wanted labels). `want` a list of
    label sets (several concepts erased in one run): an image shows "the concept" when it shows any
    of them, and its score is the highest of theirs."""

    name = "world_classifier"

    def __init__(self, classifier: ConceptClassifier, want: dict[str, str] | list[dict[str, str]]):
        wants = [dict(w) for w in (want if isinstance(want, list) else [want])]
        if not wants or not all(wants):
            raise ValueError("concept.detect: no labels; name the concept's labels, e.g. {shape: circle}")
        for w in wants:
            for h, v in w.items():
                if h not in HEADS or v not in HEADS[h]:
                    raise ValueError(f"concept.detect {h}={v!r}: unknown head or label; heads and labels: {HEADS}")
        self.classifier, self.wants = classifier.eval(), wants
        self.want = wants[0] if len(wants) == 1 else wants

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
        probs = torch.stack([self.classifier.concept_probability(images.float(), **w) for w in self.wants])
        return probs.max(0).values.tolist()

    def detect(self, images: torch.Tensor) -> list[bool]:
        labels = self.classifier.predict(images.float())
        return [any(all(labels[h][i] == v for h, v in w.items()) for w in self.wants) for i in range(images.shape[0])]

    def settings(self) -> dict:
        return {"detector": self.name, "detect": self.want, "rule": "argmax of every wanted head equals the label"}
