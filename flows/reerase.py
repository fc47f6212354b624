"""The `reerase` flow: periodic re-erasure of the registered production model.

1. Pin `MODEL@production` to its version and check its package against the manifest.
2. Re-evaluate it (recorded base + its delta) with the current prompt and attack sets.
3. Leak rate (the highest of its target rate and every attack's success rate) <=
   `register.gates.max_target_rate`: nothing to do ("still erased").
4. Otherwise fine-tune again *from the production model* with the successful prompts added
   to the forget prompts, express the result as one delta against the ORIGINAL base model
   (so `trust load MODEL@production` keeps working), evaluate it against that base, register it
   (alias `candidate`, `production` only if the gates pass); its lineage names the parent version.

Everything runs in a workspace `<reerase.workspace>/<UTC time>-<flow run id>/` (`check/`, `erase/`,
each with a derived params.yaml); the project's DVC outputs are never touched. One MLflow
parent run (`trust.flow=reerase`) holds a nested `check` run and the re-erasure's stage runs.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from mlflow import MlflowClient
from prefect import flow, get_run_logger
from prefect.runtime import flow_run as prefect_flow_run

from tasks import reerase as t
from trust import tracking
from trust.config import load_params
from trust.reerase import derive_params
from trust.utils.safetensors_io import write_json

STILL_ERASED = "still erased"
PROMOTED = "re-erased: new version promoted to production"
CANDIDATE_ONLY = "re-erased: new version registered as candidate only (gates failed)"


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


@flow(name="reerase", log_prints=True, persist_result=True)
def reerase(params_path: str = "params.yaml", root: str = ".", model_ref: str | None = None) -> dict:
    """Re-check `model_ref` (default `<register.model_name>@production`); re-erase it if it leaks."""
    root_p = Path(root).resolve()
    params_file = (root_p / params_path).resolve()
    params = load_params(params_file, root=root_p)  # validated before any work
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
    finally:
        if previous is None:
            os.environ.pop(tracking.PREFECT_ENV, None)
        else:
            os.environ[tracking.PREFECT_ENV] = previous
    write_json(summary, ws / "reerase.json")
    logger.info("reerase: %s", summary["status"])
    return summary


def _reerase(prod: dict, check: dict, params, params_file: Path, root: Path, ws: Path) -> dict:
    logger = get_run_logger()
    added = [r["prompt"] for r in check["successful"]]
    logger.info("%s leaks (leak rate %.3f > %.3f): fine-tuning again with %d successful prompt(s) added",
                prod["pinned"], check["leak_rate"], check["gate"], len(added))
    model_dir, erase = ws / "model", ws / "erase"
    t.materialise(prod, str(model_dir), params.model.device)
    try:
        # evaluate + register: against the ORIGINAL base (preservation never drifts across re-erasures);
        # localize + finetune: from the production model.
        derive_params(params, root, erase / "params.yaml", Path(prod["base_model"]), added)
        derive_params(params, root, erase / "params.finetune.yaml", model_dir, added)
        t.erase_prompts(str(erase / "params.yaml"), str(erase), added)
        t.stage("localize", str(erase / "params.finetune.yaml"), str(erase))
        t.stage("finetune", str(erase / "params.finetune.yaml"), str(erase))
        t.compose_delta(prod, str(erase), params.model.device)
        evaluated = t.stage("evaluate", str(erase / "params.yaml"), str(erase))
        result = t.register(prod, check, str(erase / "params.yaml"), str(root), str(erase))
    finally:
        if not params.reerase.keep_model:
            shutil.rmtree(model_dir, ignore_errors=True)
    logger.info("registered %s v%s (%s); target rate %.3f", result["model_name"], result["version"],
                ", ".join(result["aliases"]), evaluated.get("target_rate", float("nan")))
    return {"status": PROMOTED if result["passed"] else CANDIDATE_ONLY, "new_version": result["version"],
            "promoted": result["passed"], "failed_gates": result["failed_gates"],
            "new_target_rate": evaluated.get("target_rate"), "aliases": result["aliases"],
            "params_file": str(erase / "params.yaml")}
