"""`trust params check`: validate params.yaml before any work.

Kept free of torch on the CLI side: only trust.config is imported, when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from trust.cli.app import PARAMS_OPT, _params, app, console

params_app = typer.Typer(help="params.yaml: validate before work.", no_args_is_help=True)
app.add_typer(params_app, name="params")


@params_app.command("check")
def params_check(params: Path = PARAMS_OPT) -> None:
    """Validate params.yaml against the schema (unknown keys, types, impossible values)."""
    p = _params(params)
    console.print(f"[green]{params}: valid[/] (base model: {p.model.base}, built-in world: {p.uses_world})")
