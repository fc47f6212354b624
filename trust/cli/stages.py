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
    print_result(name, result)


def print_result(stage: str, result) -> None:
    """A short table of the stage's headline numbers (scalars, and one level of named numbers); the
    full result is the stage's file under metrics/ (or outputs/), never a screen of JSON."""
    from rich.table import Table

    def fmt(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows: list[tuple[str, str]] = []
    for k, v in (result.items() if isinstance(result, dict) else ()):
        if isinstance(v, (str, int, float, bool)) or v is None:
            rows.append((k, fmt(v)))
        elif isinstance(v, dict) and v and all(isinstance(x, (int, float, bool)) for x in v.values()) and len(v) <= 8:
            rows.append((k, ", ".join(f"{a} {fmt(b)}" for a, b in v.items())))
        elif isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()) and len(v) <= 8:
            for a, b in v.items():  # e.g. kept concepts: base / tuned / drop
                nums = {c: d for c, d in b.items() if isinstance(d, (int, float)) and not isinstance(d, bool)}
                if nums and len(nums) <= 4:
                    rows.append((f"{k}.{a}", ", ".join(f"{c} {fmt(d)}" for c, d in nums.items())))
    where = "outputs/register/registration.json" if stage == "register" else f"metrics/{stage}.json"
    t = Table(show_header=False)
    for k, v in rows[:30]:
        t.add_row(k, v)
    console.print(f"{stage}: done; full results in {where}", soft_wrap=True, markup=False, highlight=False)
    console.print(t)


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
    if Path(params).resolve() != (Path.cwd() / "params.yaml").resolve():
        # the stages are DVC stages and read params.yaml (dvc.yaml's params): running them "with" another
        # file would record that file on the parent run while the stages used params.yaml
        _fail(f"--params {params}: `trust run` runs the DVC stages, which read ./params.yaml, so {params} would be "
              "logged but not used; nothing was run. Copy it over params.yaml (git keeps the old one), or sweep "
              "values with `dvc exp run -S key=value`")
    from trust.stages.paths import pipeline_stages

    stages = pipeline_stages(p.builds_world)
    if only is None and _nothing_to_do(stages):
        # a no-op rerun: `dvc status` says every stage is up to date and the run was registered; starting
        # Prefect's temporary server (~15 s) and a flow that skips every stage would add nothing
        console.print("stages run: none (dvc status: all up to date); no flow run started", soft_wrap=True)
        summary_panel(p)
        return
    supervise_self(["run", "--params", str(params), *(["--only", only] if only else []), *(["--force"] if force else [])])
    if only is None:
        from flows.unlearn import unlearn
        from tasks.stages import GATE_FAILED_EXIT, StageFailed

        try:
            unlearn(str(params), str(Path.cwd()))
        except StageFailed as e:
            summary_panel(p, failed_stage=e.stage, error=str(e), gate_failed=e.code == GATE_FAILED_EXIT)
            raise typer.Exit(GATE_FAILED_EXIT if e.code == GATE_FAILED_EXIT else 1)
        summary_panel(p)
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


def summary_panel(p, failed_stage: str | None = None, error: str | None = None, gate_failed: bool = False) -> None:
    """The end of `trust run`: one panel from the run's outputs and the current aliases of the registry
    that `p.tracking` names (the store the register stage wrote to)."""
    from rich.panel import Panel
    from rich.text import Text

    from trust.report import run_summary
    from trust.tracking_store import store_uri

    uri = store_uri(p.tracking, Path.cwd())
    s = run_summary.unlearn_summary(Path.cwd(), failed_stage=failed_stage, error=error, gate_failed=gate_failed,
                                    aliases_of=lambda name, version: run_summary.registry_aliases(name, version, uri))
    ok = s["verdict"] == run_summary.PASSED
    console.print(Panel(Text("\n".join(run_summary.terminal_lines(s))), title=f"unlearn: {s['verdict']}",
                        border_style="green" if ok else "red", expand=False))


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


def _nothing_to_do(stages: list[str]) -> bool:
    from trust.stages import paths
    from trust.utils.lifecycle import supervised

    if supervised():  # the supervisor (this command's parent) already asked
        return False
    if not (Path.cwd() / paths.REGISTER_DIR / "registration.json").is_file():
        return False
    return not _stale_stages(stages)


def _stale_stages(stages: list[str]) -> list[str]:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *stages], capture_output=True, text=True)
    if res.returncode != 0:
        _fail(f"dvc status failed: {res.stderr.strip()}")
    status = json.loads(res.stdout or "{}")
    return [s for s in stages if s in status]

