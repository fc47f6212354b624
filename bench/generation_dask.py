"""Does distributed generation pay off? `python bench/generation_dask.py [--images 512] [--workers 2]`.

Generates the same N world images (default 512) twice, as the evaluate stage would:

(a) serially, in this process with one torch thread (`torch.set_num_threads(1)`), in batches of
    `evaluate.shard_size`;
(b) over a Dask LocalCluster of `--workers` (default 2) single-thread worker processes
    (trust/generation/dask_runner.py), one task per shard of `evaluate.shard_size` images, each
    worker loading the model from its folder and checking its fingerprint.

(b)'s wall-clock includes starting the cluster (scheduler, worker processes, each importing torch
and trust); the start-up is also reported on its own. Both timings include loading the model.
The images must be identical (`torch.equal`): every image's noise comes from its own seed and the
shards are the serial path's batches. Prompts are the world's canonical evaluation prompts
(colour x shape x background, trust/world/fidelity.py) cycled to N, image i with seed
`evaluate.seed * 1_000_003 + i`; steps, guidance and shard size are evaluate's (20, 4.0, 64 in the
shipped params.yaml).

What it found on 2 shared cores: the workers first ran each shard at half the serial speed (16.6 s
vs 8.1 s a shard; speed-up 0.88x) because Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536,
which makes torch's many small CPU allocations go back to the OS; dask_runner now starts them without
it (8.9 s a shard, speed-up 1.65x with start-up included). Workers forked from one forkserver that
imported torch start in 5.6-6.2 s and stop at once; spawned workers, each importing torch, took
6.3-7.4 s (16 s on a busy machine, vs 9 s) and 1.7 s to stop.

Writes OUT/generation_dask.{json,md}: both wall-clocks, the speed-up (serial / distributed) and
the start-up seconds. Exit 1 when the images differ. The machine's load average is recorded too:
on shared cores other work slows either run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAME = "generation_dask"


def world_prompts(n: int) -> list[str]:
    """The world's canonical evaluation prompts, cycled to `n`."""
    from trust.world.fidelity import fidelity_prompts

    canonical = [s.prompt for s in fidelity_prompts() if s.group == "canonical"]
    return [canonical[i % len(canonical)] for i in range(n)]


def image_seeds(base: int, n: int) -> list[int]:
    """One fixed seed per image."""
    return [base * 1_000_003 + i for i in range(n)]


def run_serial(model: Path, prompts: list[str], seeds: list[int], steps: int, guidance: float,
               shard_size: int) -> tuple[object, float]:
    """(images, seconds): load the model and sample every shard in this process, one torch thread."""
    import torch

    from trust.generation import GenerationSettings, generate_images
    from trust.models import load_model

    torch.set_num_threads(1)
    t = time.perf_counter()
    parts = load_model(model)
    images = generate_images(prompts, seeds, steps, guidance, GenerationSettings(shard_size=shard_size), parts=parts)
    return images, time.perf_counter() - t


def run_distributed(model: Path, fingerprint: str, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                    shard_size: int, workers: int, processes: bool) -> tuple[object, float, float, list[dict]]:
    """(images, seconds in all, start-up seconds, per-shard worker timings): a fresh LocalCluster,
    then one task per shard."""
    from distributed import get_task_stream

    from trust.generation import GenerationSettings, ModelSource, generate_images
    from trust.generation.dask_runner import dask_client

    settings = GenerationSettings(distributed=True, workers=workers, shard_size=shard_size, processes=processes)
    t = time.perf_counter()
    with dask_client(settings) as client:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t
        with get_task_stream(client) as stream:
            images = generate_images(prompts, seeds, steps, guidance, settings,
                                     source=ModelSource.of(model, fingerprint), executor=client)
        total = time.perf_counter() - t
    return images, total, startup, shard_timings(stream.data)


def shard_timings(stream: list[dict]) -> list[dict]:
    """Which worker computed each shard task and for how long (the first includes loading the model there)."""
    out = []
    for task in stream:
        compute = [s for s in task.get("startstops", ()) if s.get("action") == "compute"]
        if compute:
            out.append({"key": str(task["key"]), "worker": str(task.get("worker")),
                        "start": compute[0]["start"], "seconds": sum(s["stop"] - s["start"] for s in compute)})
    t0 = min((r["start"] for r in out), default=0.0)
    return [r | {"start": r["start"] - t0} for r in sorted(out, key=lambda r: r["start"])]


def write_markdown(result: dict, path: Path) -> None:
    s, r = result["settings"], result
    lines = [
        "# Distributed generation: serial vs Dask workers",
        "",
        f"{s['images']} world images ({s['model']}), {s['steps']} DDIM steps, guidance {s['guidance']}, "
        f"shards of {s['shard_size']} ({r['shards']} shards); `python bench/generation_dask.py`.",
        "",
        "| run | wall-clock (s) |",
        "|---|---:|",
        f"| (a) serial, 1 process x 1 torch thread | {r['serial_s']:.1f} |",
        f"| (b) Dask, {s['workers']} worker {s['worker_kind']} x 1 thread, start-up included | {r['distributed_s']:.1f} |",
        f"| of which cluster start-up (workers up, torch and trust imported) | {r['startup_s']:.1f} |",
        f"| of which generation | {r['distributed_s'] - r['startup_s']:.1f} |",
        "",
        f"**Speed-up (serial / distributed): {r['ratio']:.2f}x** with {s['workers']} workers; "
        f"images identical (torch.equal): {'yes' if r['identical'] else 'NO'}.",
        "",
        f"Seconds per shard: {r['serial_shard_mean_s']:.1f} serially, {r['worker_shard_mean_s']:.1f} on a worker "
        f"(mean over {len(r['worker_shards'])} tasks; with {s['workers']} workers busy at once). A worker's shard "
        "slower than a serial one means the workers did not get a core each.",
        "",
        f"Machine: {r['machine']['cpus']} CPUs, load average {r['machine']['loadavg_before']} before and "
        f"{r['machine']['loadavg_after']} after (cores shared with other work); torch {r['machine']['torch']}, "
        f"distributed {r['machine']['distributed']}, Python {r['machine']['python']}.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="evaluate's steps, guidance, shard size")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: world.model_dir)")
    ap.add_argument("--steps", type=int, default=None, help="default: evaluate.steps")
    ap.add_argument("--shard-size", type=int, default=None, help="default: evaluate.shard_size")
    ap.add_argument("--thread-workers", action="store_true",
                    help="workers as threads of this process (smoke tests; measures nothing useful)")
    args = ap.parse_args(argv)

    # One torch thread everywhere: worker processes inherit the environment (generate_shard sets it too).
    os.environ["TRUST_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    import distributed
    import torch

    from trust.config import load_params
    from trust.models import load_model

    params = load_params(args.params, root=args.params.parent)
    ev = params.evaluate
    model = (args.model or (args.params.parent / params.world.model_dir)).resolve()
    steps, guidance = args.steps or ev.steps, ev.guidance
    shard_size = args.shard_size or ev.shard_size
    prompts, seeds = world_prompts(args.images), image_seeds(ev.seed, args.images)
    fingerprint = load_model(model).fingerprint()
    loadavg_before = [round(x, 2) for x in os.getloadavg()]

    serial, serial_s = run_serial(model, prompts, seeds, steps, guidance, shard_size)
    print(f"serial: {serial_s:.1f} s", flush=True)
    dist, dist_s, startup_s, timings = run_distributed(model, fingerprint, prompts, seeds, steps, guidance, shard_size,
                                              args.workers, processes=not args.thread_workers)
    print(f"distributed ({args.workers} workers): {dist_s:.1f} s, of which start-up {startup_s:.1f} s", flush=True)
    identical = bool(serial.shape == dist.shape and torch.equal(serial, dist))

    result = {
        "settings": {"images": args.images, "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
                     "steps": steps, "guidance": guidance, "shard_size": shard_size, "workers": args.workers,
                     "worker_kind": "threads" if args.thread_workers else "processes", "seed": ev.seed},
        "shards": -(-args.images // shard_size),
        "serial_s": serial_s, "distributed_s": dist_s, "startup_s": startup_s,
        "ratio": serial_s / dist_s,  # speed-up of (b) over (a), start-up included
        "serial_shard_mean_s": serial_s / -(-args.images // shard_size),
        "worker_shards": timings,
        "worker_shard_mean_s": sum(r["seconds"] for r in timings) / max(1, len(timings)),
        "identical": identical,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": loadavg_before,
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
                    "distributed": distributed.__version__, "python": platform.python_version()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / f"{NAME}.md")
    print(f"speed-up {result['ratio']:.2f}x; images identical: {identical}; wrote {args.out / NAME}.{{json,md}}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
