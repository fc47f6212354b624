"""Sharded image generation on Dask workers, with plain `dask.distributed` (no Prefect).

`run_sharded` cuts the (prompt, seed) lists into shards (trust/generation), submits one
`generate_shard` call per shard and puts the images back in the original order. The workers
are a LocalCluster of `workers` single-threaded worker processes started for the call (threads
of this process with `GenerationSettings.processes` false), or the existing Dask scheduler at
`evaluate.dask_address`. Each worker loads the model from its folder (+ delta) once per process
and checks its fingerprint (trust/generation/worker.py); no module is ever pickled, only the
ModelSource dict, prompts, seeds and the resulting image tensors travel.

Worker processes are forked from a forkserver (where the platform has one) that imports torch
and trust once: two workers spawned afresh each import them, which on 2 busy cores nearly
doubled the start-up (16 s vs 9 s; 6-7 s vs 6 s when idle), and spawned workers took 1.7 s to
shut down (forked ones: none). They run without the
MALLOC_TRIM_THRESHOLD_ Dask's nanny sets by default, which halves torch's speed on small tensors
(start the workers of an existing cluster at `dask_address` with `MALLOC_TRIM_THRESHOLD_` unset,
or `distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null` in its Dask config).

A shard that fails for a transient reason (a worker's I/O, a lost connection) is sent again
once; a model mismatch or bad input is a verdict and raised at once. Dask reschedules the tasks
of a worker that dies by itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import uuid
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Iterator

import torch

from trust.generation import GenerationSettings, reassemble, shards
from trust.generation.worker import ModelMismatchError, ModelSource, generate_shard

# Failures that say the input or the model is wrong: running the shard again cannot help.
VERDICTS = (ModelMismatchError, ValueError)
ATTEMPTS = 2  # a transient failure is retried once
# Imported by each worker process while it starts, so the first shard does not pay torch's import.
PRELOAD = "trust.generation.worker"


@contextmanager
def _forked_workers() -> Iterator[None]:
    """While open, Dask's nannies start worker processes from a forkserver that has imported PRELOAD.

    The forkserver is a fresh single-threaded interpreter (unlike this process, which may run
    torch's thread pool and Dask's event loop thread), so forking from it is safe; it starts with
    the first worker and serves every later LocalCluster of this process.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        yield
        return
    import dask
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context()  # sets distributed's own preload list once per process; ours replaces it below
        multiprocessing.get_context("forkserver").set_forkserver_preload(["distributed", PRELOAD])
        yield


@contextmanager
def dask_client(settings: GenerationSettings) -> Iterator["distributed.Client"]:  # noqa: F821
    """A Dask client for `settings`: the scheduler at `dask_address`, else a LocalCluster of
    `workers` single-threaded workers (processes or threads), shut down on exit."""
    from distributed import Client

    if settings.dask_address:
        with Client(settings.dask_address, set_as_default=False) as client:
            yield client
        return
    if not settings.processes:
        with _local_client(settings) as client:
            yield client
        return
    import dask

    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers (to hand freed memory back to
    # the OS): with torch's many small CPU tensors that halves the sampling speed (8 s -> 15 s a
    # shard of 64 world images). The workers keep glibc's default; OMP_NUM_THREADS=1 etc. stay.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
            _forked_workers(), _local_client(settings, preload=[PRELOAD]) as client:
        yield client


LOCALHOST = "127.0.0.1"


@contextmanager
def _local_client(settings: GenerationSettings, **worker_kwargs) -> Iterator["distributed.Client"]:  # noqa: F821
    from distributed import Client, LocalCluster

    # No dashboard (nothing watches it, and it costs start-up); the scheduler's HTTP server (health,
    # metrics) on a free port rather than 8787, which another cluster may hold. Scheduler, workers
    # and that server listen on 127.0.0.1 only: Dask's traffic is pickles. Only warnings logged.
    # (threads: Dask's in-process transport, no socket to bind)
    where = {"host": LOCALHOST} if settings.processes else {}
    with LocalCluster(n_workers=settings.workers, threads_per_worker=1, processes=settings.processes, **where,
                      dashboard_address=None,
                      scheduler_kwargs={"dashboard": False, "dashboard_address": f"{LOCALHOST}:0"},
                      silence_logs=logging.WARNING, **worker_kwargs) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def _submit(executor: Executor, index: int, attempt: int, args: tuple) -> Future:
    from distributed import Client

    if isinstance(executor, Client):
        # pure=False: never reuse a cached result (a retry must run again); the key names the shard in Dask's logs.
        return executor.submit(generate_shard, *args, pure=False,
                               key=f"generate-shard-{index}-try{attempt}-{uuid.uuid4().hex[:8]}")
    return executor.submit(generate_shard, *args)


def gather_with_retry(executor: Executor, calls: list[tuple], log: logging.Logger | None = None) -> list[torch.Tensor]:
    """`generate_shard(*calls[i])` for every i, all submitted at once, results in order; a shard
    whose failure is not a verdict (VERDICTS) is submitted again, up to ATTEMPTS tries in all."""
    log = log or logging.getLogger(__name__)
    futures = [_submit(executor, i, 1, args) for i, args in enumerate(calls)]
    results = []
    for i, future in enumerate(futures):
        for attempt in range(1, ATTEMPTS + 1):
            try:
                results.append(future.result())
                break
            except VERDICTS:
                raise
            except Exception as e:  # transient: a worker's I/O, a lost connection, ...
                if attempt == ATTEMPTS:
                    raise
                log.warning("shard %d failed (%s: %s); retrying it once", i, type(e).__name__, e)
                future = _submit(executor, i, attempt + 1, calls[i])
    return results


def run_sharded(source: ModelSource, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                settings: GenerationSettings, executor: Executor | None = None) -> torch.Tensor:
    """Images (N, 3, H, W) on the CPU, image i from prompts[i] and seeds[i], sampled by Dask workers
    (or by `executor`, anything with `submit(fn, *args) -> Future`: a Dask Client or a thread pool)."""
    pieces = shards(prompts, seeds, settings.shard_size)
    if not pieces:
        raise ValueError("no prompts to generate images from")
    calls = [(source.to_dict(), p, s, steps, guidance, settings.shard_size, settings.torch_threads()) for p, s in pieces]
    if executor is not None:
        results = gather_with_retry(executor, calls)
    else:
        with dask_client(settings) as client:
            results = gather_with_retry(client, calls)
    return reassemble(results, [len(p) for p, _ in pieces])

