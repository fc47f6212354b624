"""`trust world ...`: build, train and check the built-in world (its model and classifier)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from trust.cli.app import METRICS_DIR, PARAMS_OPT, _fail, _params, _threads, app, console, err

world_app = typer.Typer(help="The built-in world: a small text-to-image model trained on procedural scenes.",
                        no_args_is_help=True)
app.add_typer(world_app, name="world")


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
    from trust.utils.fs import write_text_atomic
    from trust.utils.safetensors_io import write_json
    from trust.world.train import train_world

    p = _params(params)
    _threads()
    summary = train_world(p.world.train, p.world.model_dir, p.world.checkpoint_dir)
    losses = summary.pop("losses")
    METRICS_DIR.mkdir(exist_ok=True)
    write_text_atomic(METRICS_DIR / "world_train_loss.csv", "step,loss\n" + "".join(f"{i + 1},{v}\n" for i, v in enumerate(losses)))
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

