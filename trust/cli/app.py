"""The `trust` Typer app and what every command shares: the console, --params, validation, failure.

Only typer and rich at import time: `trust params check` must stay fast, so each command
imports what it needs (torch, mlflow, prefect...) inside its own body.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="trust: erase concepts from text-to-image diffusion models, with proof and lineage.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

console = Console()
err = Console(stderr=True)
PARAMS_OPT = typer.Option(Path("params.yaml"), "--params", "-p", help="parameter file")
METRICS_DIR = Path("metrics")


def _threads() -> None:
    import torch

    n = os.environ.get("TRUST_NUM_THREADS")
    if n:
        torch.set_num_threads(int(n))


def _fail(message: str, code: int = 2) -> None:
    # soft_wrap: one message, one line, even in logs captured at a narrow width; no markup or
    # highlighting, so hashes, paths and [brackets] in the message print as they are.
    err.print(message, style="red", soft_wrap=True, markup=False, highlight=False)
    raise typer.Exit(code)


def _params(path: Path):
    """Validate all of params.yaml before any work; exit 2 with the offending keys named."""
    from trust.config import ParamsError, load_params

    try:
        return load_params(path)
    except ParamsError as e:
        _fail(str(e))
