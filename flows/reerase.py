"""The `reerase` flow: periodic re-erasure of the registered production model.

1. Pin `MODEL@production` to its version and check its package against the manifest.
2. Re-evaluate it (recorded base + its delta) with the current prompt and attack sets.
3. Leak rate (the highest of its target rate and every attack's success rate) <=
   `register.gates.max_target_rate`: nothing to do ("still erased").
4. Otherwise repair it in rounds (at most `reerase.max_rounds`): fine-tune again *from the
   production model* with every prompt that broke through so far added to the forget prompts
   and the adversarial option on (`reerase.adversarial`: the inner attack of
   trust/methods/adversarial.py), express the result as one delta against the ORIGINAL base
   model (so `trust load MODEL@production` keeps working) and evaluate it against that base
   (preservation cannot drift round by round), attacks included. The first round whose gates
   all pass (the leak rate included: register.gates.max_asr is at most max_target_rate) is
   registered and promoted; otherwise what broke through it joins the next round. When the
   rounds are spent, the best one is registered as `candidate` only and the flow run fails
   (RepairFailed), naming the gate and the measured value. Lineage names the parent version.

Everything runs in a workspace `<reerase.workspace>/<UTC time>-<flow run id>/` (`check/`,
`round-1/`, ..., each with derived params files); the project's DVC outputs are never touched.
One MLflow parent run (`trust.flow=reerase`) holds a nested `check` run and one `round N` run per
round (its metrics: target and leak rate, worst kept drop; its stage runs nested under it).
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from mlflow import MlflowClient
from prefect import flow, get_run_logger
from prefect.runtime import flow_run as prefect_flow_run

from flows.naming import namer
from flows.notify import notify_failure
from tasks import reerase as t
from trust import tracking
from trust.config import load_params
from trust.reerase.params import check_one_concept
from trust.reerase.repair import failure_message, repair
from trust.report.run_summary import failed_gate_text
from trust.utils.safetensors_io import write_json

STILL_ERASED = "still erased"
PROMOTED = "re-erased: new version promoted to production"
CANDIDATE_ONLY = "re-erased: new version registered as candidate only (gates failed)"
NOT_REPAIRED = "not repaired: no repair round reached its fine-tuning bar"


def _threads() -> None:
    n = os.environ.get("TRUST_NUM_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


def new_workspace(root: Path, base: Path) -> Path:
    run_id = str(prefect_flow_run.get_id() or "local")[:8]
    folder = base / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{run_id}"  # base: resolved at load_params
    folder.mkdir(parents=True, exist_ok=False)
    return folder


@flow(name="reerase", log_prints=True, persist_result=True, flow_run_name=namer("reerase"),
      on_failure=[notify_failure])
def reerase(params_path: str = "params.yaml", root: str = ".", model_ref: str | None = None) -> dict:
    """Re-check `model_ref` (default `<register.model_name>@production`); re-erase it if it leaks."""
    root_p = Path(root).resolve()
    params_file = (root_p / params_path).resolve()
    params = load_params(params_file, root=root_p)  # validated before any work
    check_one_concept(params)
    _threads()
    tracking.configure(params.tracking, root_p)
    logger = get_run_logger()
    ref = model_ref or f"{params.registry.model_name}@production"
    prod = t.resolve_production(ref)
    ws = new_workspace(root_p, params.reerase.workspace)
    summary = {"checked": prod["pinned"], "ref": ref, "workspace": str(ws), "new_version": None, "promoted": False}
    flow_run_id = str(prefect_flow_run.get_id() or "")
    previous = os.environ.get(tracking.PREFECT_ENV)
    if flow_run_id:
        os.environ[tracking.PREFECT_ENV] = flow_run_id  # tags the MLflow runs with the Prefect flow run
    try:
        with tracking.flow_run("reerase", params, root_p) as parent:
            client = MlflowClient()
            client.set_tag(parent.info.run_id, "trust.checked_version", prod["pinned"])
            summary["mlflow_run_id"] = parent.info.run_id
            check = t.check_production(prod, str(params_file), str(root_p), str(ws / "check"))
            summary |= {"target_rate": check["target_rate"], "leak_rate": check["leak_rate"], "asr": check["asr"],
                        "gate": check["gate"],
                        "successful_prompts": [r["prompt"] for r in check["successful"]]}
            if not check["exceeds"]:
                summary["status"] = STILL_ERASED
                logger.info("%s: leak rate %.3f <= gate %.3f: still erased, nothing registered", prod["pinned"],
                            check["leak_rate"], check["gate"])
            else:
                summary |= _reerase(prod, check, params, params_file, root_p, ws)
            client.set_tag(parent.info.run_id, "trust.reerase.status", summary["status"])
            if summary["new_version"]:
                client.set_tag(parent.info.run_id, "trust.registered_version", f"{prod['name']}/{summary['new_version']}")
            write_json(summary, ws / "reerase.json")
            logger.info("reerase: %s", summary["status"])
            publish(summary, prod["name"])
            if summary["status"] in (CANDIDATE_ONLY, NOT_REPAIRED):
                # the flow run (and its MLflow run) ends Failed, naming the gate and the measured value
                logger.error(summary["message"])
                raise RepairFailed(summary["message"], summary)
    finally:
        if previous is None:
            os.environ.pop(tracking.PREFECT_ENV, None)
        else:
            os.environ[tracking.PREFECT_ENV] = previous
    return summary


def publish(summary: dict, model_name: str) -> None:
    """The run's summary as the flow run's Markdown artifact (Prefect UI: Artifacts)."""
    from prefect.artifacts import create_markdown_artifact

    from flows.unlearn import artifact_key
    from trust.report.run_summary import reerase_markdown

    try:
        create_markdown_artifact(markdown=reerase_markdown(summary), key=artifact_key("reerase", model_name),
                                 description=f"reerase {summary.get('checked')}: {summary['status']}")
    except Exception as e:  # noqa: BLE001 - reporting the run never replaces its own outcome
        get_run_logger().warning("could not publish the run's artifact: %s", e)


class RepairFailed(RuntimeError):
    """Every repair round was spent without one passing its gates; the flow run ends Failed."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def _reerase(prod: dict, check: dict, params, params_file: Path, root: Path, ws: Path) -> dict:
    """Repair rounds (trust/reerase/repair.py), each a `round N` MLflow run with its stage runs and a
    line in the flow's log; the passing round is registered and promoted, else the best one as
    candidate only."""
    logger = get_run_logger()
    logger.info("%s leaks (leak rate %.3f > %.3f): repairing in at most %d round(s), %d successful prompt(s) to add",
                prod["pinned"], check["leak_rate"], check["gate"], params.reerase.max_rounds, len(check["successful"]))
    model_dir = ws / "model"
    t.materialise(prod, str(model_dir), params.model.device)

    def run_round(r: int, added: list[str]):
        rd = t.repair_round(prod, str(params_file), str(root), str(ws / f"round-{r}"), str(model_dir), added, r)
        if not rd.evaluated:
            logger.warning("round %d: fine-tuning did not reach its bar: %s", r, rd.error)
        else:
            logger.info("round %d (%d added prompt(s)): leak rate %.3f (target %.3f, attacks %s), worst kept drop "
                        "%.3f: %s", r, len(added), rd.leak_rate, rd.target_rate, rd.asr or "-", rd.worst_drop,
                        "passed" if rd.passed else "failed " + ", ".join(
                            failed_gate_text(k, v) for k, v in rd.failed_gates.items()))
        return rd

    try:
        rep = repair(check["successful"], params.reerase.max_rounds, params.reerase.max_added_prompts, run_round,
                     log=logger.info)
        result = None
        if rep.chosen is not None:
            folder = Path(rep.chosen.folder)
            rows = [{"prompt": q} for q in rep.chosen.added]
            result = t.register(prod, {**check, "successful": rows}, str(folder / "params.yaml"), str(root),
                                str(folder))
    finally:
        if not params.reerase.keep_model:
            shutil.rmtree(model_dir, ignore_errors=True)
    out = {"rounds": [r.record() for r in rep.rounds], "new_version": None, "promoted": False, "failed_gates": [],
           "aliases": [], "new_target_rate": None, "new_leak_rate": None}
    if result is not None:
        c = rep.chosen
        logger.info("registered %s v%s (%s) from round %d; leak rate %.3f", result["model_name"], result["version"],
                    ", ".join(result["aliases"]), c.round, c.leak_rate)
        out.update(new_version=result["version"], promoted=result["passed"], failed_gates=result["failed_gates"],
                   aliases=result["aliases"], new_target_rate=c.target_rate, new_leak_rate=c.leak_rate, round=c.round,
                   params_file=str(Path(c.folder) / "params.yaml"))
    out["status"] = PROMOTED if out["promoted"] else CANDIDATE_ONLY if result is not None else NOT_REPAIRED
    if not out["promoted"]:
        out["message"] = failure_message(prod["pinned"], check, rep, params.reerase.max_rounds)
    return out
