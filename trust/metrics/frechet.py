"""Fréchet distances between image sets in a feature space.

`frechet_distance` is the FID formula ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½) on any
features. In the world it is taken in the concept classifier's pooled feature space and
reported as "world-classifier Fréchet distance" — it is NOT FID. Standard FID needs local
Inception weights (`evaluate.inception_weights`), absent they are not guessed.
ΔFID = FD(erased, reference) - FD(base, reference) on non-target prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

WORLD_FD_NAME = "world-classifier Fréchet distance"
INCEPTION_HELP = ("set evaluate.inception_weights to a local TorchScript Inception-v3 feature extractor "
                  "(inception-2015-12-05.pt, the file StyleGAN2-ADA and clean-fid use for FID)")


class FidelityError(ValueError):
    """A fidelity metric cannot be computed; the message names the parameter and what to provide."""


def _sqrtm(m: np.ndarray) -> np.ndarray:
    out = linalg.sqrtm(m)
    return out[0] if isinstance(out, tuple) else out  # older SciPy returned (sqrtm, error)


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two (N>=2, D) feature arrays of the same D, got {a.shape} and {b.shape}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@torch.no_grad()
def classifier_features(classifier, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    return torch.cat([classifier.embed(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)]).numpy()


def world_frechet(classifier, reference: torch.Tensor, base: torch.Tensor, erased: torch.Tensor) -> dict:
    """Base and erased images (same prompts, same seeds) against a reference set."""
    r, b, e = (classifier_features(classifier, x) for x in (reference, base, erased))
    fd_b, fd_e = frechet_distance(b, r), frechet_distance(e, r)
    return {"name": WORLD_FD_NAME, "base": fd_b, "erased": fd_e, "delta": fd_e - fd_b,
            "erased_vs_base": frechet_distance(e, b), "images": {"reference": len(r), "generated": len(b)}}


class InceptionFeatures:
    """Standard FID features: 2048-d pool features of the TorchScript Inception-v3."""

    def __init__(self, path: Path | str | None, param: str = "evaluate.inception_weights", trusted: bool = False):
        if path is None:
            raise FidelityError(f"{param} is not set: standard FID needs Inception weights; {INCEPTION_HELP}")
        path = Path(path)
        if not path.is_file():
            raise FidelityError(f"{param}: file {str(path)!r} does not exist; {INCEPTION_HELP}")
        if not trusted:  # the params check refuses it first; this keeps any other caller honest
            raise FidelityError(f"{param}: {str(path)!r} is TorchScript, which runs the code it holds when loaded; "
                                "set evaluate.trust_torchscript: true for a file you trust")
        self.path = path
        self.model = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            x = ((images[i:i + batch_size].float().clamp(-1, 1) + 1) * 127.5)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(self.model(x, return_features=True).cpu())
        return torch.cat(out).numpy()


def fid(features: InceptionFeatures, reference: torch.Tensor, base: torch.Tensor, erased: torch.Tensor) -> dict:
    r, b, e = features(reference), features(base), features(erased)
    fd_b, fd_e = frechet_distance(b, r), frechet_distance(e, r)
    return {"name": "FID (Inception-v3)", "weights": str(features.path), "base": fd_b, "erased": fd_e,
            "delta": fd_e - fd_b}
