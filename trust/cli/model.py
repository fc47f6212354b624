"""`trust model info`: load a model folder through the model-access layer and describe it."""

from __future__ import annotations

from pathlib import Path

import typer

from trust.cli.app import _fail, app, console
from trust.utils.tables import parts_table

model_app = typer.Typer(help="Inspect a model folder.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("info")
def model_info(path: Path = typer.Argument(..., help="SD pipeline folder or world folder")) -> None:
    """Load a model folder through the model-access layer and print its parts and fingerprint."""
    from trust.models import ModelLoadError, load_model

    try:
        parts = load_model(path)
    except ModelLoadError as e:
        _fail(str(e))
    t = parts_table(parts, f"{path} ({parts.kind})")
    t.add_row("tokenizer", type(parts.tokenizer).__name__, f"vocab {len(parts.tokenizer)}")
    t.add_row("scheduler", type(parts.scheduler).__name__, "")
    console.print(t)
    console.print(f"image size {parts.image_size}px, fingerprint {parts.fingerprint()}")
