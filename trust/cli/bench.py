"""`trust bench`: the side-by-side method benchmark (trust/methods/benchmark.py)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from trust.cli.app import PARAMS_OPT, _fail, app, console


@app.command("bench")
def bench_cmd(
    params: Path = PARAMS_OPT,
    out: Path = typer.Option(Path("bench/results"), help="where methods.{md,json,png} go"),
    steps: int = typer.Option(None, help="step budget per method (default 200; --quick: 4)"),
    check_every: int = typer.Option(None, help="check the erasure bar every N steps"),
    quick: bool = typer.Option(False, help="smoke run: few steps, tiny samples"),
    runs: str = typer.Option(None, help="comma-separated labels, e.g. TRUST-CIP,SalUn"),
    stop_at_bar: bool = typer.Option(True, help="stop a method once it reaches the erasure bar"),
) -> None:
    """Benchmark TRUST against ESD, SalUn, ConceptPrune and full fine-tuning on the world (one seed)."""
    import torch

    from trust.config import ParamsError
    from trust.methods.benchmark import run_from_params

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    try:
        run_from_params(params, out, steps, quick, check_every, runs, stop_at_bar, root=Path.cwd(),
                        log=console.print)
    except (ParamsError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print((out / "methods.md").read_text(), markup=False)
