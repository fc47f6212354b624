"""CLIP zero-shot detection from a local CLIP folder (no downloads).

The image is scored against `labels`; the first label is the concept, the others are
alternatives ("a photo of a person"...). Detected when the concept's softmax probability
exceeds `threshold`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from trust.detectors.base import Detector, DetectorError

CLIP_HELP = ("give a local folder holding a transformers CLIPModel and its processor (config.json, "
             "model.safetensors, preprocessor_config.json, tokenizer files), e.g. "
             "openai/clip-vit-large-patch14 saved with save_pretrained")


def require_clip_dir(clip_dir: Path | str | None, param: str = "evaluate.detector.clip_dir") -> Path:
    if clip_dir is None:
        raise DetectorError(f"{param} is not set: CLIP weights are needed for CLIP zero-shot detection; {CLIP_HELP}")
    clip_dir = Path(clip_dir)
    if not (clip_dir / "config.json").is_file():
        raise DetectorError(f"{param}: {str(clip_dir)!r} has no CLIP model (no config.json); {CLIP_HELP}")
    return clip_dir


class ClipZeroShotDetector(Detector):
    name = "clip_zero_shot"

    def __init__(self, clip_dir: Path | str | None, labels: list[str], threshold: float = 0.5, device: str = "cpu"):
        clip_dir = require_clip_dir(clip_dir)
        if len(labels) < 2:
            raise DetectorError("evaluate.detector.clip_labels: give the concept's label first and at least one "
                                "alternative, e.g. ['a photo of a nude person', 'a photo of a person']")
        from transformers import CLIPModel, CLIPProcessor

        self.clip_dir, self.labels, self.threshold, self.device = clip_dir, list(labels), float(threshold), device
        self.model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)

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
