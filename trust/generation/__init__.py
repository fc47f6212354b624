"""Image generation at scale: (prompt, seed) lists cut into shards, sampled serially or fanned
out over Dask workers (trust/generation/dask_runner.py, plain dask.distributed), reassembled in order.

Every image's starting noise comes from its own seed (trust/sampling.py), and a shard of
`shard_size` images is sampled as one batch in both paths, so the serial and the distributed
path give identical images (same batch compositions, hence the same arithmetic).

Workers never receive pickled modules: each loads the model from its folder (and applies
the weights delta when there is one) and checks that the model's fingerprint is the one the
caller expects (`ModelMismatchError` otherwise).
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from dataclasses import dataclass

import torch

from trust.generation.worker import ModelMismatchError, ModelSource, generate_shard, load_verified
from trust.models.parts import DiffusionParts

__all__ = ["GenerationSettings", "ModelMismatchError", "ModelSource", "generate_images", "generate_shard",
           "load_verified", "reassemble", "shards"]


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate: in this process (`distributed` false) or over Dask (a LocalCluster of
    `workers` single-threaded processes, or the scheduler at `dask_address`; see dask_runner)."""

    distributed: bool = False
    dask_address: str | None = None
    workers: int = 2
    shard_size: int = 64
    processes: bool = True  # LocalCluster workers as processes (false: threads of this process; tests)

    @classmethod
    def from_params(cls, ev) -> "GenerationSettings":
        """From `EvaluateParams` (evaluate.distributed, dask_address, workers, shard_size)."""
        return cls(distributed=ev.distributed, dask_address=ev.dask_address, workers=ev.workers, shard_size=ev.shard_size)

    def torch_threads(self) -> int | None:
        """Torch threads per worker process: TRUST_NUM_THREADS, else the cores shared out over the local
        workers; None (leave the caller's setting) for thread workers inside this process."""
        if not self.processes and not self.dask_address:
            return None
        n = os.environ.get("TRUST_NUM_THREADS")
        if n:
            return max(1, int(n))
        return max(1, (os.cpu_count() or 1) // (1 if self.dask_address else self.workers))


def shards(prompts: list[str], seeds: list[int], shard_size: int) -> list[tuple[list[str], list[int]]]:
    """Consecutive (prompts, seeds) slices of at most `shard_size` pairs, in order."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(list(prompts[i : i + shard_size]), [int(s) for s in seeds[i : i + shard_size]])
            for i in range(0, len(prompts), shard_size)]


def reassemble(parts: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """Shard results (in shard order) back into one (N, 3, H, W) tensor, checking each shard's size."""
    if len(parts) != len(sizes):
        raise RuntimeError(f"expected {len(sizes)} shard results, got {len(parts)}")
    for i, (t, n) in enumerate(zip(parts, sizes)):
        if t.shape[0] != n:
            raise RuntimeError(f"shard {i} returned {t.shape[0]} images for {n} (prompt, seed) pairs")
    return torch.cat(parts)


def generate_images(
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    settings: GenerationSettings = GenerationSettings(),
    parts: DiffusionParts | None = None,
    source: ModelSource | None = None,
    executor: Executor | None = None,
) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1], image i from prompts[i] and seeds[i].

    Serial (settings.distributed false): sampled from `parts` in this process, in batches of
    `shard_size` (loaded from `source` if `parts` is None). Distributed: shards of `shard_size`
    pairs sampled by Dask workers that load `source` (or by `executor`, e.g. a Dask Client the
    caller already holds); the result lands on `parts`' device (CPU without `parts`).
    """
    if not settings.distributed:
        from trust.sampling import generate

        if parts is None:
            if source is None:
                raise ValueError("generate_images: give the model (parts) or where to load it from (source)")
            parts = load_verified(source)
        return generate(parts, prompts, seeds, steps, guidance, batch_size=settings.shard_size)
    if source is None:
        raise ValueError("distributed generation needs a ModelSource (model folder, delta, fingerprint): workers "
                         "load the model themselves")
    from trust.generation.dask_runner import run_sharded  # imports distributed only when used

    images = run_sharded(source, prompts, seeds, steps, guidance, settings, executor)
    return images.to(parts.unet.device) if parts is not None else images
