"""Sharded image generation as a Prefect flow on Dask (prefect-dask's DaskTaskRunner).

`run_sharded` cuts the (prompt, seed) lists into shards (trust/generation), submits one
`generate-shard` task per shard and puts the images back in the original order. The task
runner is a LocalCluster of `workers` single-threaded worker processes by default, or the
existing Dask scheduler at `evaluate.dask_address`. Each worker loads the model from its
folder (+ delta) once per process and checks its fingerprint (trust/generation/worker.py);
no module is ever pickled, only prompts, seeds and the resulting image tensors travel.
"""

from __future__ import annotations

import torch
from prefect import flow, task
from prefect.cache_policies import NONE as NO_CACHE

from trust.generation import GenerationSettings, ModelSource, reassemble, shards
from trust.generation.worker import ModelMismatchError, generate_shard


def _retry_transient(task, task_run, state) -> bool:
    """Retry a shard once on a transient failure; never on a model mismatch or bad input."""
    try:
        state.result()
    except (ModelMismatchError, ValueError):
        return False
    except Exception:
        return True
    return False


@task(name="generate-shard", task_run_name="shard-{index}", cache_policy=NO_CACHE, persist_result=False,
      retries=1, retry_condition_fn=_retry_transient)
def generate_shard_task(source: dict, index: int, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                        batch_size: int, torch_threads: int | None) -> torch.Tensor:
    return generate_shard(source, prompts, seeds, steps, guidance, batch_size, torch_threads)


@flow(name="generate-images", persist_result=False, validate_parameters=False, log_prints=False)
def generate_images_flow(source: dict, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                         shard_size: int, torch_threads: int | None = None) -> list[torch.Tensor]:
    """One task per shard of `shard_size` (prompt, seed) pairs; results in shard order."""
    futures = [generate_shard_task.submit(source, i, p, s, steps, guidance, shard_size, torch_threads)
               for i, (p, s) in enumerate(shards(prompts, seeds, shard_size))]
    return [f.result() for f in futures]  # raises the first failed shard's error (e.g. ModelMismatchError)


def task_runner(settings: GenerationSettings):
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": settings.workers, "threads_per_worker": 1, "processes": settings.processes,
                        "dashboard_address": ":0"},
    )


def run_sharded(source: ModelSource, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                settings: GenerationSettings) -> torch.Tensor:
    """Images (N, 3, H, W) on the CPU, image i from prompts[i] and seeds[i], sampled by Dask workers."""
    pieces = shards(prompts, seeds, settings.shard_size)
    if not pieces:
        raise ValueError("no prompts to generate images from")
    run = generate_images_flow.with_options(task_runner=task_runner(settings))
    results = run(source.to_dict(), list(prompts), [int(s) for s in seeds], steps, guidance, settings.shard_size,
                  settings.torch_threads())
    return reassemble(results, [len(p) for p, _ in pieces])
