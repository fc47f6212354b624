"""`trust reerase` and `trust schedule`: periodic re-erasure of the production model."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from trust.cli.app import PARAMS_OPT, _fail, _params, app, console, err

GATE_FAILED_EXIT = 3


def check_cron(cron: str) -> str:
    """Prefect's own cron validation, so a bad expression fails here and not in the server."""
    from prefect.client.schemas.schedules import CronSchedule

    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError as e:
        why = "; ".join(x["msg"].removeprefix("Value error, ") for x in e.errors())
        _fail(f"--cron {cron!r}: not a valid cron expression ({why}); e.g. '0 3 * * 1' (Mondays 03:00)")
    return cron


@app.command("reerase")
def reerase_cmd(
    params: Path = PARAMS_OPT,
    model: str = typer.Option(None, "--model", help="MODEL@ALIAS or MODEL/VERSION to check "
                                                     "(default: <register.model_name>@production)"),
) -> None:
    """Run the `reerase` flow once: re-check the production model, re-erase it if it leaks.

    Exit 0: still erased, or repaired and promoted; 3: the repair rounds (reerase.max_rounds) were
    spent without one passing its gates (the best is registered as candidate only, production
    unchanged; the flow run is Failed); 2: invalid params or no such registered model.
    """
    from mlflow.exceptions import MlflowException

    from trust.models import ModelLoadError
    from trust.registry import RegistryError

    _params(params)
    from trust.cli.stages import supervise_self

    supervise_self(["reerase", "--params", str(params), *(["--model", model] if model else [])])
    from flows.reerase import RepairFailed, reerase

    failed = None
    state = reerase(str(params.resolve()), str(Path.cwd()), model, return_state=True)
    if state.is_failed():
        e = state.result(raise_on_failure=False)
        if isinstance(e, (RegistryError, ModelLoadError, MlflowException, FileNotFoundError)):
            _fail(str(e))
        if not isinstance(e, RepairFailed):
            raise e
        failed, summary = e, e.summary  # the repair rounds were spent without passing
    else:
        summary = state.result()
    console.print(f"checked {summary['checked']}: leak rate {summary['leak_rate']:.3f} (target rate "
                  f"{summary['target_rate']:.3f}, attacks {summary['asr'] or '-'}; gate {summary['gate']})",
                  soft_wrap=True, markup=False)
    for r in summary.get("rounds", []):
        what = (f"leak rate {r['leak_rate']:.3f}, target rate {r['target_rate']:.3f}, worst kept drop "
                f"{r['worst_drop']:.3f}: {'passed' if r['passed'] else 'failed ' + ', '.join(r['failed_gates'])}"
                if r.get("leak_rate") is not None else "fine-tuning did not reach its bar")
        console.print(f"round {r['round']} ({r['added_prompts']} added prompt(s)): {what}", soft_wrap=True,
                      markup=False)
    if summary.get("new_version"):
        console.print(f"new version {summary['new_version']} ({', '.join(summary['aliases'])}) from round "
                      f"{summary.get('round')}, leak rate {summary['new_leak_rate']:.3f}", soft_wrap=True, markup=False)
    console.print(f"{summary['status']}; workspace {summary['workspace']}", soft_wrap=True, markup=False)
    if failed is not None:
        err.print(f"flow run {state.name}: {failed}", style="red", soft_wrap=True, markup=False)
        raise typer.Exit(GATE_FAILED_EXIT)

@app.command("schedule")
def schedule_cmd(
    cron: str = typer.Option(..., "--cron", help="cron expression, e.g. '0 3 * * 1' (Mondays 03:00)"),
    params: Path = PARAMS_OPT,
    name: str = typer.Option(None, "--name", help="deployment name (default: register.model_name)"),
    timezone: str = typer.Option("UTC", "--timezone", help="time zone of the cron expression"),
    model: str = typer.Option(None, "--model", help="MODEL@ALIAS to check (default <model_name>@production)"),
) -> None:
    """Create the `reerase/<name>` deployment with this cron schedule and serve it (blocks).

    Ctrl-C stops serving and pauses the schedule. Uses the Prefect server at PREFECT_API_URL
    when set (`prefect server start`); otherwise a temporary one that lives with this command.
    """
    p = _params(params)
    check_cron(cron)
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    from flows.reerase import reerase

    name = name or p.registry.model_name
    api = os.environ.get("PREFECT_API_URL")
    if api:
        console.print(f"Prefect API: {api}", soft_wrap=True, markup=False)
    else:
        err.print("PREFECT_API_URL is not set: using a temporary local Prefect server that lives only as long "
                  "as this command; for a lasting schedule run `prefect server start` and set "
                  "PREFECT_API_URL=http://127.0.0.1:4200/api", style="yellow", soft_wrap=True, markup=False)
    parameters = {"params_path": str(params.resolve()), "root": str(Path.cwd()), "model_ref": model}
    console.print(f"deployment reerase/{name}: cron '{cron}' ({timezone}); trigger one run with "
                  f"`prefect deployment run reerase/{name}`", soft_wrap=True, markup=False)
    reerase.serve(name=name, schedule=CronSchedule(cron=cron, timezone=timezone), parameters=parameters,
                  tags=["trust", "reerase"], description=f"periodic re-erasure of {model or name + '@production'}",
                  entrypoint_type=EntrypointType.MODULE_PATH)
