"""`trust bench`: the side-by-side method benchmark. The benchmarks are not part of the installed
library: this command runs the project's `bench/methods.py` (its code is in bench/lib/methods.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from trust.cli.app import PARAMS_OPT, _fail, app


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
    script = Path.cwd() / "bench" / "methods.py"
    if not script.is_file():
        _fail(f"{script} not found: run `trust bench` from the project root (the benchmarks live in bench/)")
    cmd = [sys.executable, str(script), "--params", str(params), "--out", str(out)]
    cmd += ["--steps", str(steps)] if steps else []
    cmd += ["--check-every", str(check_every)] if check_every else []
    cmd += ["--quick"] if quick else []
    cmd += ["--runs", runs] if runs else []
    cmd += [] if stop_at_bar else ["--no-stop-at-bar"]
    raise typer.Exit(subprocess.run(cmd).returncode)
