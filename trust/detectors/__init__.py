"""Detectors: does an image show the concept? One interface (`Detector`), three kinds."""

from __future__ import annotations

from pathlib import Path

from trust.detectors.base import Detector, DetectorError
from trust.detectors.clip import ClipZeroShotDetector, require_clip_dir
from trust.detectors.nudity import EXPOSED_CLASSES, NudeNetDetector
from trust.detectors.world import WorldDetector

__all__ = ["Detector", "DetectorError", "ClipZeroShotDetector", "NudeNetDetector", "WorldDetector", "EXPOSED_CLASSES",
           "build_detector", "require_clip_dir"]


def build_detector(params, root: Path, classifier_dir: Path | None = None, want: dict[str, str] | None = None,
                   device: str = "cpu") -> Detector:
    """From `evaluate.detector` (DetectorParams). The world detector needs the classifier folder and labels."""
    if params.kind == "world":
        if classifier_dir is None or want is None:
            raise DetectorError("evaluate.detector.kind: world needs world.classifier_dir and concept.detect")
        return WorldDetector.load(root / classifier_dir, want)
    if params.kind == "nudenet":
        return NudeNetDetector(params.nudenet_threshold, params.nudenet_classes)
    clip_dir = None if params.clip_dir is None else (params.clip_dir if params.clip_dir.is_absolute() else root / params.clip_dir)
    return ClipZeroShotDetector(clip_dir, params.clip_labels, params.clip_threshold, device)
