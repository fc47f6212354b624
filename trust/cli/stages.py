"""The pipeline stage commands (what `dvc repro` calls) and `trust run` (the `unlearn` flow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from trust.cli.app import PARAMS_OPT, _fail, _params, _threads, app, console, err


def _stage(name: str, params: Path) -> None:
    """Run one pipeline stage in-process (what `dvc repro` calls)."""
    import importlib
    import os

    from trust import tracking
    from trust.utils.lifecycle import exit_with_parent

    p = _params(params)
    if os.environ.get("DVC_STAGE"):  # run by `dvc repro`: never outlive it (a killed `trust run`)
        exit_with_parent()
    if (where := unwritable(Path.cwd())):
        _fail(f"{name}: cannot write {where}; nothing was run. Make it writable (e.g. chmod -R u+w {where}) "
              "or run from a writable copy of the project")
    _threads()
    tracking.configure(p.tracking, Path.cwd())
    module = importlib.import_module(f"trust.stages.{name}")
    try:
        result = module.run(p, Path.cwd())
    except PermissionError as e:
        # Found only as it writes (a file made read-only under a writable folder): the stage's
        # staged outputs are discarded, the earlier ones are in place.
        _fail(f"{name}: cannot write {e.filename}: {e.strerror}; make it writable and run the stage again")
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


def unwritable(root: Path) -> Path | None:
    """The first folder a stage writes into (the project, its outputs, metrics, data and caches)
    that exists but cannot be written, checked before any model loads; None when all can."""
    import os

    from trust.stages import paths

    for d in (root, root / "outputs", root / paths.METRICS, root / "data", root / ".cache",
              *(root / "outputs" / s for s in paths.STAGES)):
        if d.is_dir() and not os.access(d, os.W_OK | os.X_OK):
            return d
    return None


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
    supervise_self(["run", "--params", str(params), *(["--only", only] if only else []), *(["--force"] if force else [])])
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


def supervise_self(args: list[str]) -> None:
    """Run this command's work in a supervised child (trust/utils/lifecycle.py) and exit with its
    code, unless this is that child: then SIGTERM (its supervisor died, or `kill`) ends every
    process of its group (DVC, the stage, Prefect's temporary server) and unwinds this one."""
    import sys

    from trust.utils.lifecycle import supervise, supervised, terminate_group_on_sigterm

    if supervised():
        terminate_group_on_sigterm()
        return
    raise typer.Exit(supervise([sys.executable, "-m", "trust.cli", *args]))


def _stale_stages(stages: list[str]) -> list[str]:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *stages], capture_output=True, text=True)
    if res.returncode != 0:
        _fail(f"dvc status failed: {res.stderr.strip()}")
    status = json.loads(res.stdout or "{}")
    return [s for s in stages if s in status]

