"""The pipeline stage commands (what `dvc repro` calls) and `trust run` (the `unlearn` flow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from trust.cli.app import PARAMS_OPT, _fail, _params, _threads, app, console, err


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
        # A failed gate, or a bar not reached within the budget: verdicts, exit 3 (the flow does not retry
        # them: a retry resumes the same run, with the same budget already spent)
        if type(e).__name__ in ("GateFailed", "BarNotReached"):
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

    stages = pipeline_stages(p.builds_world)
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

