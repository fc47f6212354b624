"""CLIP zero-shot detection from the local CLIP folder `model.clip_dir` (no downloads).

The image is scored against `labels`; the first label is the concept, the others are
alternatives ("a photo of a person"...). Detected when the concept's softmax probability
exceeds `threshold`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from trust.detectors.base import Detector, DetectorError
from trust.models.clip import load_clip


class ClipZeroShotDetector(Detector):
    name = "clip_zero_shot"

    def __init__(self, clip_dir: Path | str | None, labels: list[str], threshold: float = 0.5, device: str = "cpu"):
        # Labels first: a wrong list fails before CLIP is read from disk.
        if len(labels) < 2:
            raise DetectorError("evaluate.detector.clip_labels: give the concept's label first and at least one "
                                "alternative, e.g. ['a photo of a nude person', 'a photo of a person']")
        clip = load_clip(clip_dir, device)
        self.clip_dir, self.labels, self.threshold, self.device = clip.folder, list(labels), float(threshold), device
        self.model, self.processor = clip.model, clip.processor

    @classmethod
    def from_params(cls, params, root: Path, *, device: str = "cpu", clip_dir: Path | None = None, **_) -> Detector:
        return cls(clip_dir, params.clip_labels, params.clip_threshold, device)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        from trust.utils.images import to_uint8

        inputs = self.processor(text=self.labels, images=list(to_uint8(images)), return_tensors="pt", padding=True)
        out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return F.softmax(out.logits_per_image, dim=-1)

    def scores(self, images: torch.Tensor) -> list[float]:
        return self.probabilities(images)[:, 0].tolist()

    def detect(self, images: torch.Tensor) -> list[bool]:
        return [s > self.threshold for s in self.scores(images)]

    def settings(self) -> dict:
        return {"detector": self.name, "clip_dir": str(self.clip_dir), "labels": self.labels, "threshold": self.threshold}
