"""The `unlearn` flow: prompts -> localize -> finetune -> evaluate -> register, one Prefect
task per DVC stage (plus the world's stages when the base model is the built-in world),
under one MLflow parent run whose nested runs are the stages that actually ran."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as prefect_flow_run

from flows.naming import namer
from flows.notify import notify_failure
from tasks.stages import GATE_FAILED_EXIT, StageFailed, run_stage
from trust.config import load_params
from trust.report import run_summary
from trust.stages.paths import pipeline_stages
from trust import tracking


@flow(name="unlearn", log_prints=True, flow_run_name=namer("unlearn"), on_failure=[notify_failure])
def unlearn(params_path: str = "params.yaml", root: str = ".") -> list[dict]:
    root_p = Path(root).resolve()
    params = load_params(root_p / params_path, root=root_p)  # validated before any work
    tracking.configure(params.tracking, root_p)
    logger = get_run_logger()
    results = []
    with tracking.flow_run("unlearn", params, root_p) as parent:
        env = {"TRUST_PARENT_RUN_ID": parent.info.run_id,
               "TRUST_PREFECT_FLOW_RUN_ID": str(prefect_flow_run.get_id() or "")}
        try:
            for stage in pipeline_stages(params.builds_world):
                results.append(run_stage(stage, str(root_p), env))
        except StageFailed as e:
            # the run ends Failed (the exception propagates); what it measured is still published
            summary = run_summary.unlearn_summary(root_p, failed_stage=e.stage, error=str(e),
                                                  gate_failed=e.code == GATE_FAILED_EXIT)
            publish(summary, params, logger)
            try:
                log_headline(parent.info.run_id, summary)
            except Exception as err:  # noqa: BLE001 - the stage's failure is what propagates
                logger.warning("could not log the run's headline to MLflow: %s", err)
            raise
        ran = [r["stage"] for r in results if r["ran"]]
        logger.info("stages run: %s; skipped (up to date): %s", ran or "none",
                    [r["stage"] for r in results if not r["ran"]] or "none")
        summary = run_summary.unlearn_summary(root_p)
        publish(summary, params, logger)
        if ran:
            log_headline(parent.info.run_id, summary)
    if not ran:  # a no-op run leaves no empty run in MLflow (the versions keep their own runs)
        from mlflow import MlflowClient

        MlflowClient().delete_run(parent.info.run_id)
        logger.info("nothing ran: the flow's MLflow run %s was deleted (no-op)", parent.info.run_id)
    return results


def log_headline(run_id: str, summary: dict) -> None:
    """The parent run's own metrics and verdict: what the MLflow runs table shows per pipeline run."""
    from mlflow import MlflowClient

    client, ev, reg = MlflowClient(), summary.get("evaluate") or {}, summary.get("registration") or {}
    metrics = {k: ev[k] for k in ("target_rate", "target_rate_base") if k in ev}
    if ev.get("keep"):
        metrics["worst_kept_drop"] = max(float(k["drop"]) for k in ev["keep"].values())
    metrics |= {f"asr.{k}": v for k, v in (ev.get("asr") or {}).items()}
    if reg:
        metrics |= {"version": float(reg["version"]), "gates_passed": float(bool(reg.get("passed")))}
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v))
    client.set_tag(run_id, "trust.verdict", summary["verdict"])


def artifact_key(flow: str, concept: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    import re

    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"{flow}-{concept}".lower())).strip("-")


def publish(summary: dict, params, logger) -> None:
    """The run's summary as log lines and as the flow run's Markdown artifact (Prefect UI: Artifacts)."""
    from prefect.artifacts import create_markdown_artifact

    (logger.info if summary["verdict"] == run_summary.PASSED else logger.error)(run_summary.headline(summary))
    try:
        create_markdown_artifact(markdown=run_summary.markdown(summary, "unlearn"),
                                 key=artifact_key("unlearn", params.concept_name),
                                 description=run_summary.headline(summary))
    except Exception as e:  # noqa: BLE001 - reporting the run never replaces its own outcome
        logger.warning("could not publish the run's artifact: %s", e)
