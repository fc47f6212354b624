"""`trust` command line: one sub-command per pipeline step, each reading params.yaml."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from trust.utils.tables import parts_table

app = typer.Typer(help="trust: erase concepts from text-to-image diffusion models, with proof and lineage.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
world_app = typer.Typer(help="The built-in world: a small text-to-image model trained on procedural scenes.",
                        no_args_is_help=True)
params_app = typer.Typer(help="params.yaml: validate before work.", no_args_is_help=True)
model_app = typer.Typer(help="Inspect a model folder.", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(params_app, name="params")
app.add_typer(model_app, name="model")


def _add_registry_commands() -> None:
    from trust.cli_registry import add_commands  # `trust load`, `trust lineage`

    add_commands(app)

console = Console()
err = Console(stderr=True)
PARAMS_OPT = typer.Option(Path("params.yaml"), "--params", "-p", help="parameter file")
METRICS_DIR = Path("metrics")


def _threads() -> None:
    import torch

    n = os.environ.get("TRUST_NUM_THREADS")
    if n:
        torch.set_num_threads(int(n))


def _params(path: Path):
    """Validate all of params.yaml before any work; exit 2 with the offending keys named."""
    from trust.config import ParamsError, load_params

    try:
        return load_params(path)
    except ParamsError as e:
        err.print(str(e), style="red", markup=False)
        raise typer.Exit(2)


def _fail(message: str) -> None:
    # soft_wrap: one message, one line, even in logs captured at a narrow width.
    err.print(message, style="red", soft_wrap=True, markup=False)
    raise typer.Exit(2)


@params_app.command("check")
def params_check(params: Path = PARAMS_OPT) -> None:
    """Validate params.yaml against the schema (unknown keys, types, impossible values)."""
    p = _params(params)
    console.print(f"[green]{params}: valid[/] (base model: {p.model.base}, built-in world: {p.uses_world})")


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


@world_app.command("train-classifier")
def world_train_classifier(params: Path = PARAMS_OPT) -> None:
    """Train the world's concept classifier (the detector's stand-in) and report held-out accuracy."""
    from trust.utils.fs import staged_dir
    from trust.utils.safetensors_io import write_json
    from trust.world.classifier import heldout_accuracy, train_classifier

    p = _params(params)
    _threads()
    t0 = time.perf_counter()
    model, losses = train_classifier(p.world.classifier)
    acc = heldout_accuracy(model, seed=p.world.classifier.seed + 10_000, image_size=p.world.classifier.image_size)
    with staged_dir(p.world.classifier_dir) as tmp:
        model.save(tmp)
    write_json({"heldout_accuracy": acc, "final_loss": losses[-1], "seconds": round(time.perf_counter() - t0, 1),
                "parameters": sum(x.numel() for x in model.parameters())}, METRICS_DIR / "world_classifier.json")
    console.print(f"classifier -> {p.world.classifier_dir}; held-out accuracy {acc}")


@world_app.command("train")
def world_train(params: Path = PARAMS_OPT) -> None:
    """Train the world's text-to-image model (resumes from the last checkpoint)."""
    from trust.utils.safetensors_io import write_json
    from trust.world.train import train_world

    p = _params(params)
    _threads()
    summary = train_world(p.world.train, p.world.model_dir, p.world.checkpoint_dir)
    losses = summary.pop("losses")
    METRICS_DIR.mkdir(exist_ok=True)
    (METRICS_DIR / "world_train_loss.csv").write_text("step,loss\n" + "".join(f"{i + 1},{v}\n" for i, v in enumerate(losses)))
    write_json(summary, METRICS_DIR / "world_train.json")
    console.print(f"world model -> {p.world.model_dir} ({summary['fingerprint']})")


@world_app.command("build")
def world_build(params: Path = PARAMS_OPT) -> None:
    """Make sure the world's model and classifier exist: use the shipped ones, train what is missing."""
    p = _params(params)
    from trust.models import ModelLoadError, load_model

    if not (p.world.classifier_dir / "model.safetensors").is_file():
        world_train_classifier(params)
    try:
        parts = load_model(p.world.model_dir)
        console.print(f"world model present: {p.world.model_dir} ({parts.fingerprint()})")
    except ModelLoadError:
        console.print(f"[yellow]no world model in {p.world.model_dir}: training it (~12 min on 2 cores)")
        world_train(params)


def fidelity_table(report: dict) -> Table:
    s = report["settings"]
    t = Table(title=f"World fidelity - DDIM {s['steps']} steps, guidance {s['guidance']}, "
                    f"{s['samples_per_prompt']} samples/prompt, bar {report['bars']['canonical']}")
    for col in ("concept", "shape correct", "colour correct", "shape+colour", "bar"):
        t.add_column(col, justify="left" if col == "concept" else "right")
    bar = report["bars"]["canonical"]
    for kind in ("shape", "colour"):
        for name, v in report[kind].items():
            ok = "[green]pass" if v["joint"] >= bar else "[red]FAIL"
            t.add_row(f"{kind} {name}", f"{v['shape']:.2f}", f"{v['colour']:.2f}", f"{v['joint']:.2f}", ok)
    if "synonym" in report:
        syn = report["synonym"]
        ok = "[green]pass" if syn["pooled_joint"] >= report["bars"]["synonym"] else "[red]FAIL"
        t.add_row(f"synonym prompts (bar {report['bars']['synonym']})", "", "", f"{syn['pooled_joint']:.2f}", ok)
    for prompt, v in report["shape_only"].items():
        t.add_row(f"'{prompt}'", f"{v:.2f}", "", "", "")
    for prompt, v in report["colour_only"].items():
        t.add_row(f"'{prompt}'", "", f"{v:.2f}", "", "")
    return t


@world_app.command("eval")
def world_eval(
    params: Path = PARAMS_OPT,
    out: Path = typer.Option(Path("reports/world"), help="folder for the sample grids"),
    samples: int = typer.Option(None, help="override world.eval.samples_per_prompt"),
    model: Path = typer.Option(None, help="evaluate this model folder instead of world.model_dir"),
) -> None:
    """Generate from every fidelity prompt, score with the classifier, print and write the fidelity."""
    from trust.models import ModelLoadError, load_model
    from trust.utils.safetensors_io import write_json
    from trust.world.classifier import ConceptClassifier
    from trust.world.fidelity import evaluate_fidelity, fidelity_prompts, write_grids

    p = _params(params)
    _threads()
    cfg = p.world.eval if samples is None else p.world.eval.model_copy(update={"samples_per_prompt": samples})
    try:
        parts = load_model(model or p.world.model_dir)
        classifier = ConceptClassifier.load(p.world.classifier_dir)
    except (ModelLoadError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    t0 = time.perf_counter()
    specs = fidelity_prompts()
    report, images = evaluate_fidelity(parts, classifier, cfg, specs, progress=True)
    seconds = time.perf_counter() - t0
    grids = write_grids(specs, images, report, out)
    # No timings in the tracked metrics file: same model and seed give the same bytes.
    write_json(report, METRICS_DIR / "world_fidelity.json")
    console.print(fidelity_table(report))
    console.print(f"{seconds:.0f} s; grids: {', '.join(map(str, grids))}; metrics: {METRICS_DIR / 'world_fidelity.json'}")
    if not report["passed"]:
        err.print("[red]fidelity bar not met: " + "; ".join(report["failures"]))
        raise typer.Exit(1)
    console.print("[green]fidelity bar met")


def _stage(name: str, params: Path) -> None:
    """Run one pipeline stage in-process (what `dvc repro` calls)."""
    import importlib

    from trust import tracking

    p = _params(params)
    _threads()
    tracking.configure(p.tracking, Path.cwd())
    module = importlib.import_module(f"trust.stages.{name}")
    try:
        result = module.run(p, Path.cwd())
    except (FileNotFoundError, ValueError) as e:
        # Missing inputs and bad settings found once the stage looks at them (a scorer without its
        # weights, a mask that does not fit the model): a message naming what to fix, exit 2.
        _fail(f"{name}: {e}")
    except Exception as e:
        if type(e).__name__ == "GateFailed":
            err.print(str(e), style="red", soft_wrap=True, markup=False)
            raise typer.Exit(3)
        raise
    console.print_json(data={k: v for k, v in result.items() if not isinstance(v, (list,))} if isinstance(result, dict) else result)


@app.command("prompts")
def prompts_cmd(params: Path = PARAMS_OPT) -> None:
    """Stage: expand the concept block into train/eval prompt sets (data/prompts.json)."""
    _stage("prompts", params)


@app.command("localize")
def localize_cmd(params: Path = PARAMS_OPT) -> None:
    """Stage: initial concept-neuron mask, counts per layer, heat map."""
    _stage("localize", params)


@app.command("finetune")
def finetune_cmd(params: Path = PARAMS_OPT) -> None:
    """Stage: selective fine-tuning; writes the weights delta (resumes from its checkpoint)."""
    _stage("finetune", params)


@app.command("evaluate")
def evaluate_cmd(params: Path = PARAMS_OPT) -> None:
    """Stage: target detection rate and preservation, base vs erased on the same seeds."""
    _stage("evaluate", params)


@app.command("register")
def register_cmd(params: Path = PARAMS_OPT) -> None:
    """Stage: register the delta in the MLflow registry; `production` only if the gates pass (exit 3 if not)."""
    _stage("register", params)


@app.command("run")
def run_cmd(
    params: Path = PARAMS_OPT,
    only: str = typer.Option(None, help="run just this stage (DVC decides whether it is stale)"),
    force: bool = typer.Option(False, help="with --only: run even if upstream stages are stale"),
) -> None:
    """Run the `unlearn` flow (every stage, skipping what is up to date), or one stage with --only."""
    p = _params(params)
    from flows.unlearn import pipeline_stages

    stages = pipeline_stages(p.uses_world)
    if only is None:
        from flows.unlearn import unlearn

        unlearn(str(params), str(Path.cwd()))
        return
    if only not in stages:
        _fail(f"--only {only!r}: unknown stage; stages are {', '.join(stages)}")
    from tasks.stages import repro_stage, stage_env

    upstream = stages[: stages.index(only)]
    stale = _stale_stages(upstream)
    if stale and not force:
        _fail(f"upstream stage(s) {', '.join(stale)} are stale; run `trust run` (all) or "
              f"`dvc repro {only}` (this stage and its upstream), or pass --force to run {only} on the old outputs")
    repro_stage(only, Path.cwd(), stage_env(), console.print)


def _stale_stages(stages: list[str]) -> list[str]:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *stages], capture_output=True, text=True)
    if res.returncode != 0:
        _fail(f"dvc status failed: {res.stderr.strip()}")
    status = json.loads(res.stdout or "{}")
    return [s for s in stages if s in status]


_add_registry_commands()
__import__("trust.cli_schedule").cli_schedule.add_commands(app)  # `trust reerase`, `trust schedule`
__import__("trust.cli_bench").cli_bench.add_commands(app)  # `trust bench`


def main() -> None:
    app()


if __name__ == "__main__":
    main()
