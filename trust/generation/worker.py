"""What one generation worker does: load the model from its folder (plus the weights delta),
check it is the model the caller means, and sample one shard of (prompt, seed) pairs.

Nothing here imports Prefect or Dask: the same function runs in-process, in a Dask worker
process or thread, or anywhere else the model folder is readable at the same path.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trust.models.parts import DiffusionParts


class ModelMismatchError(RuntimeError):
    """A worker loaded a model whose fingerprint is not the one the caller expects."""


@dataclass(frozen=True)
class ModelSource:
    """Where a worker finds the model: a model folder, an optional weights delta applied on top
    (trust/delta.py), and the fingerprint (`DiffusionParts.fingerprint()`) of the result."""

    path: str
    fingerprint: str
    delta: str | None = None
    device: str = "cpu"
    dtype: str = "float32"  # model.dtype: what the worker's forwards compute in
    sample_batch: int | None = None  # model.sample_batch

    @classmethod
    def of(cls, path: Path | str, fingerprint: str, delta: Path | str | None = None, device: str = "cpu",
           dtype: str = "float32", sample_batch: int | None = None) -> "ModelSource":
        # Absolute paths: a worker's working directory is not the caller's.
        return cls(str(Path(path).resolve()), fingerprint, str(Path(delta).resolve()) if delta else None, device,
                   dtype, sample_batch)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return self.path + (f" + delta {self.delta}" if self.delta else "")


# One loaded model per worker process (SD weights are large; the evaluate stage samples
# the base model, then the erased one). Keyed by the whole source, fingerprint included.
_CACHE: "OrderedDict[ModelSource, DiffusionParts]" = OrderedDict()
_CACHE_SIZE = 1
_LOCK = threading.Lock()


def load_verified(source: ModelSource) -> DiffusionParts:
    """The model of `source`, loaded once per process; raises ModelMismatchError on a wrong fingerprint."""
    from trust.delta import apply_delta
    from trust.models import load_model

    with _LOCK:
        if source in _CACHE:
            _CACHE.move_to_end(source)
            return _CACHE[source]
        while len(_CACHE) >= _CACHE_SIZE:  # free the old model before loading the next
            _CACHE.popitem(last=False)
        parts = load_model(source.path, device=source.device, sample_batch=source.sample_batch, dtype=source.dtype)
        if source.delta:
            apply_delta(parts, Path(source.delta))
        got = parts.fingerprint()
        if got != source.fingerprint:
            raise ModelMismatchError(
                f"worker {socket.gethostname()} (pid {os.getpid()}) loaded {source.describe()} with fingerprint "
                f"{got}, but the caller expects {source.fingerprint}: the folder or delta differs on this worker "
                "(changed since the caller loaded it, or another copy at the same path); refusing to generate "
                "images from a different model")
        _CACHE[source] = parts
        return parts


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def generate_shard(
    source: ModelSource | dict,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    batch_size: int,
    torch_threads: int | None = None,
) -> torch.Tensor:
    """Images (n, 3, H, W) of one shard, on the CPU, image i from prompts[i] and seeds[i]."""
    from trust.sampling import generate

    if isinstance(source, dict):
        source = ModelSource(**source)
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    parts = load_verified(source)
    return generate(parts, list(prompts), [int(s) for s in seeds], steps, guidance, batch_size=batch_size).cpu()
