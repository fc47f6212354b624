"""Detectors: does an image show the concept? One interface (`Detector`), three kinds."""

from __future__ import annotations

from pathlib import Path

from trust.detectors.base import Detector, DetectorError
from trust.detectors.clip import ClipZeroShotDetector
from trust.detectors.nudity import EXPOSED_CLASSES, NudeNetDetector
from trust.detectors.world import WorldDetector
from trust.utils.registry import Registry

# evaluate.detector.kind -> Detector class (built by its `from_params`).
DETECTORS: Registry[type[Detector]] = Registry("detector", "evaluate.detector.kind")
DETECTORS.add("world", WorldDetector)
DETECTORS.add("nudenet", NudeNetDetector)
DETECTORS.add("clip", ClipZeroShotDetector)

__all__ = ["DETECTORS", "Detector", "DetectorError", "ClipZeroShotDetector", "NudeNetDetector", "WorldDetector",
           "EXPOSED_CLASSES", "build_detector"]


def build_detector(params, root: Path, classifier_dir: Path | None = None, want: dict[str, str] | None = None,
                   device: str = "cpu", clip_dir: Path | None = None) -> Detector:
    """From `evaluate.detector` (DetectorParams). The world detector needs the classifier folder and labels;
    the CLIP detector `model.clip_dir` (relative paths are read from `root`)."""
    return DETECTORS.get(params.kind).from_params(params, root, classifier_dir=classifier_dir, want=want,
                                                  device=device, clip_dir=clip_dir)
