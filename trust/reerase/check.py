"""Is the production model still erased? Re-evaluated with the current prompt and attack sets."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow import MlflowClient

from trust import tracking
from trust.config import Params
from trust.reerase.params import derive_params
from trust.reerase.prompts import successful_prompts
from trust.reerase.stages import run_stage
from trust.stages import paths


def leak_rate(metrics: dict) -> tuple[float, dict]:
    """How often the concept comes back: the highest of the no-attack target rate and every
    attack's success rate (`asr` in metrics/evaluate.json, when the evaluation ran attacks)."""
    asr = {k: float(v) for k, v in (metrics.get("asr") or {}).items() if v is not None and v == v}
    return max([float(metrics["target_rate"]), *asr.values()]), asr


def check_production(prod: dict, params: Params, root: Path, folder: Path) -> dict:
    """Evaluate the production model `prod` (recorded base + its delta) in `folder` with the
    current prompt and attack sets, exactly as the evaluate stage does, under one nested MLflow
    run (prompts + evaluate); returns its target and leak rates, attack success rates, the gate,
    whether it exceeds it, and the successful prompts."""
    p = derive_params(params, root, folder / "params.yaml", Path(prod["base_model"]))
    (folder / paths.DELTA).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(prod["delta"], folder / paths.DELTA)
    gate = params.registry.gates.max_target_rate
    with tracking.group_run(f"check {prod['pinned']}",
                            {"trust.stage": "check", "trust.checked_version": prod["pinned"]}) as run:
        run_stage("prompts", p, folder)
        metrics = run_stage("evaluate", p, folder)
        rate, asr = leak_rate(metrics)
        found = successful_prompts(folder, params.reerase.max_added_prompts)
        client = MlflowClient()
        for k, v in {"target_rate": float(metrics["target_rate"]), "leak_rate": rate,
                     "successful_prompts": len(found)}.items():
            client.log_metric(run.info.run_id, k, v)
        client.set_tag(run.info.run_id, "trust.exceeds_gate", str(rate > gate).lower())
    return {"target_rate": float(metrics["target_rate"]), "leak_rate": rate, "asr": asr, "gate": gate,
            "exceeds": rate > gate, "successful": found, "keep": metrics.get("keep", {}), "folder": str(folder)}
