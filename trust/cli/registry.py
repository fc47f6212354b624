"""`trust load` and `trust lineage`: use and audit registered models."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from trust.cli.app import PARAMS_OPT, _fail, app, console
from trust.utils.tables import parts_table


def _configure(params_path: Path) -> None:
    """Point MLflow at the project's store, as the stages do, before any registry lookup."""
    from trust import tracking
    from trust.config import ParamsError, load_params

    try:
        tracking.configure(load_params(params_path, check_files=False).tracking, Path.cwd())
    except ParamsError as e:
        _fail(str(e))


def _errors():
    from mlflow.exceptions import MlflowException

    from trust.models import ModelLoadError

    return (ValueError, FileNotFoundError, ModelLoadError, MlflowException)


@app.command("load")
def load_cmd(
    ref: str = typer.Argument(..., help="MODEL@ALIAS or MODEL/VERSION"),
    prompt: str = typer.Option(None, "--prompt", help="generate 4 images from this prompt"),
    out: Path = typer.Option(None, "--out", help="PNG grid written with --prompt (default: outputs/load/"
                                                 "<MODEL>_<ALIAS or VERSION>.png beside the params file)"),
    device: str = typer.Option("cpu", "--device"),
    params: Path = PARAMS_OPT,
) -> None:
    """Rebuild a registered model (base + delta) and optionally sample from it."""
    from trust.registry import load_registered

    _configure(params)
    try:
        parts = load_registered(ref, device=device)
    except _errors() as e:
        _fail(str(e))
    t = parts_table(parts, f"{ref} ({parts.kind}, base {parts.source})")
    console.print(t)
    console.print(f"tuned fingerprint {parts.fingerprint()}", soft_wrap=True)
    if prompt:
        from trust.config import load_params
        from trust.sampling import generate
        from trust.utils.images import labelled_grid

        ev = load_params(params, check_files=False).evaluate
        images = generate(parts, [prompt] * 4, list(range(4)), steps=ev.steps, guidance=ev.guidance)
        if out is None:  # the project's outputs/, never the repository root
            out = Path(params).resolve().parent / "outputs" / "load" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", ref) + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        labelled_grid([(prompt, images)], title=ref).save(out)
        console.print(f"4 samples of {prompt!r} (seeds 0-3): {out}")

@app.command("export")
def export_cmd(
    ref: str = typer.Argument(..., help="MODEL@ALIAS or MODEL/VERSION"),
    out: Path = typer.Option(None, "--out", help="folder to write (default: outputs/export/<MODEL>_<ALIAS or "
                                                 "VERSION>/ beside the params file)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out"),
    device: str = typer.Option("cpu", "--device"),
    params: Path = PARAMS_OPT,
) -> None:
    """Write a registered version as a model folder (SD base: a diffusers StableDiffusionPipeline folder)."""
    from trust.export import export_registered

    _configure(params)
    if out is None:
        out = Path(params).resolve().parent / "outputs" / "export" / re.sub(r"[^A-Za-z0-9_.-]+", "_", ref)
    try:
        rec = export_registered(ref, out, device=device, overwrite=overwrite)
    except (*_errors(), FileExistsError) as e:
        _fail(str(e))
    how = ("StableDiffusionPipeline.from_pretrained(folder)" if rec["kind"] != "world"
           else "trust.models.load_model(folder)")
    console.print(f"{ref} (v{rec['version']}, tuned fingerprint {rec['tuned_fingerprint']}) exported to "
                  f"{rec['folder']}; load it with {how}", soft_wrap=True, markup=False, highlight=False)


@app.command("lineage")
def lineage_cmd(
    ref: str = typer.Argument(..., help="MODEL@ALIAS or MODEL/VERSION"),
    params: Path = PARAMS_OPT,
) -> None:
    """Print a version's lineage and re-hash its package; exit 1 if any file changed."""
    from trust.lineage import format_lineage, lineage, verify

    _configure(params)
    try:
        info = lineage(ref)
        rows = verify(ref)
    except _errors() as e:
        _fail(str(e))
    console.print(format_lineage(info), markup=False, highlight=False, soft_wrap=True)
    t = Table(title="package check")
    for col in ("file", "status", "expected sha256", "actual sha256"):
        t.add_column(col)
    colour = {"ok": "green"}
    for r in rows:
        c = colour.get(r["status"], "red")
        t.add_row(escape(r["path"]), f"[{c}]{r['status']}", (r["expected"] or "-")[:16], (r["actual"] or "-")[:16])
    console.print(t)
    bad = [f"{r['path']} ({r['status']})" for r in rows if r["status"] != "ok"]
    if bad:
        _fail(f"package of {ref} does not match what was registered: {', '.join(bad)}", code=1)
    console.print(f"[green]all {len(rows)} package files match their registered sha256")
