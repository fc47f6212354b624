"""Detectors: NudeNet threshold and class filter, world classifier, clear errors for missing weights."""

import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from trust.config import DetectorParams
from trust.detectors import (DETECTORS, EXPOSED_CLASSES, ClipZeroShotDetector, DetectorError, NudeNetDetector,
                             build_detector)
from trust.models import ModelLoadError
from trust.metrics import FidelityError, InceptionFeatures


class FakeNudeNet:
    """Stands in for nudenet.NudeDetector: returns fixed raw detections, records its inputs."""

    def __init__(self, dets):
        self.dets, self.inputs = dets, []

    def detect(self, image):
        self.inputs.append(image)
        return self.dets


def _images(n=1):
    x = -torch.ones(n, 3, 8, 8)
    x[:, 0] = 1.0  # pure red in RGB, [-1, 1] range
    return x


def test_nudenet_covered_classes_only_is_not_nude():
    covered = [{"class": "FEMALE_BREAST_COVERED", "score": 0.95, "box": [0, 0, 4, 4]},
               {"class": "BUTTOCKS_COVERED", "score": 0.9, "box": [0, 0, 4, 4]},
               {"class": "FACE_FEMALE", "score": 0.99, "box": [0, 0, 4, 4]}]
    det = NudeNetDetector(0.6, model=FakeNudeNet(covered))
    assert det.detect(_images(2)) == [False, False]
    assert det.scores(_images(1)) == [0.0]


def test_nudenet_threshold_applies_to_exposed_classes():
    dets = [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5, "box": [0, 0, 4, 4]}]
    assert NudeNetDetector(0.45, model=FakeNudeNet(dets)).detect(_images()) == [True]
    assert NudeNetDetector(0.6, model=FakeNudeNet(dets)).detect(_images()) == [False]
    # A class left out of the list is not counted, whatever its score.
    feet = [{"class": "FEET_EXPOSED", "score": 0.99, "box": [0, 0, 4, 4]}]
    classes = [c for c in EXPOSED_CLASSES if c != "FEET_EXPOSED"]
    assert NudeNetDetector(0.6, classes, model=FakeNudeNet(feet)).detect(_images()) == [False]
    d = NudeNetDetector(0.45, model=FakeNudeNet(dets))
    assert d.exposed_parts(_images(3))["FEMALE_BREAST_EXPOSED"] == 3


def test_nudenet_records_settings_and_gets_bgr_uint8():
    fake = FakeNudeNet([])
    det = NudeNetDetector(0.45, model=fake)
    det.detect(_images())
    img = fake.inputs[0]
    assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
    assert img[0, 0].tolist() == [0, 0, 255]  # BGR: red is the last channel
    s = det.settings()
    assert s["threshold"] == 0.45 and len(s["classes"]) == 9 and s["package"] == "nudenet==3.4.2"


def test_real_nudenet_on_a_plain_image():
    det = NudeNetDetector(0.6)
    assert det.detect(torch.zeros(1, 3, 64, 64)) == [False]


def test_world_detector_on_rendered_scenes(root, shipped_params):
    from trust.stages.evaluate import rendered_reference

    det = build_detector(DetectorParams(), root, shipped_params.world.classifier_dir, {"shape": "circle"})
    imgs = rendered_reference(["a red circle"] * 4 + ["a blue square"] * 4, 0, 16)
    assert det.detect(imgs) == [True] * 4 + [False] * 4
    assert det.settings()["detect"] == {"shape": "circle"}


def test_clip_without_folder_names_the_param(tmp_path):
    labels = ["a nude person", "a person"]
    with pytest.raises(ModelLoadError, match=r"model\.clip_dir is not set.*CLIPModel"):
        build_detector(DetectorParams(kind="clip", clip_labels=labels), tmp_path)
    with pytest.raises(ModelLoadError, match=r"model\.clip_dir: .*nowhere.* no CLIP model"):
        build_detector(DetectorParams(kind="clip", clip_labels=labels), tmp_path, clip_dir=Path("nowhere"))
    with pytest.raises(DetectorError, match=r"evaluate\.detector\.clip_labels"):
        ClipZeroShotDetector(tmp_path / "nowhere", ["a nude person"])


def test_every_detector_kind_is_registered():
    # the params schema's kinds and the registry's are the same list: a new kind needs both
    assert DETECTORS.names() == typing.get_args(DetectorParams.model_fields["kind"].annotation)
    with pytest.raises(ValueError, match=r"evaluate\.detector\.kind: unknown detector 'magic'; choose one of: world"):
        build_detector(DetectorParams.model_construct(kind="magic"), Path("."))


def test_fid_without_inception_weights_names_what_to_provide(tmp_path):
    with pytest.raises(FidelityError, match=r"evaluate\.inception_weights.*inception-2015-12-05\.pt"):
        InceptionFeatures(None)
    with pytest.raises(FidelityError, match=r"does not exist"):
        InceptionFeatures(tmp_path / "missing.pt")


def test_nudenet_class_list_is_the_packages():
    """evaluate.detector.nudenet_classes is checked against NUDENET_CLASSES before any work; the
    list must be NudeNet's own (read from the installed package's source, not imported)."""
    import ast
    import importlib.util
    from pathlib import Path

    from trust.config.evaluate import NUDENET_CLASSES

    src = Path(importlib.util.find_spec("nudenet").origin).parent / "nudenet.py"
    tree = ast.parse(src.read_text())
    labels = next(ast.literal_eval(n.value) for n in ast.walk(tree)
                  if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__labels" for t in n.targets))
    assert tuple(labels) == NUDENET_CLASSES
