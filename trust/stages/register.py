"""`trust register`: package the delta with what rebuilds the pipeline, register it in the
MLflow model registry, and move `production` only when the gates pass.

A failed gate still registers the version (alias `candidate`, for inspection) but moves
nothing else, names the failed gate, and exits non-zero (`GateFailed`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from trust.config import Params
from trust.delta import read_delta
from trust.registry import gate_results, register_version, write_model_card
from trust.stages import evaluate_metrics, paths
from trust.tracking import dvc_stage_hashes, git_commit, stage_run
from trust.utils.fs import staged_dir
from trust.utils.safetensors_io import write_json

GRIDS = {"before_after.png": paths.EVALUATE_DIR, "curves.png": paths.FINETUNE_DIR, "heatmap.png": paths.LOCALIZE_DIR}


class GateFailed(RuntimeError):
    """The evaluation did not pass a registration gate; `production` was left where it was."""


def build_package(package: Path, root: Path, params: Params, metrics: dict, lineage: dict, pipeline: dict,
                  extra_json: dict[str, object] | None = None, card_extra: str = "") -> Path:
    """The registered folder: delta, prompts, pipeline.json (what rebuilds the model from its
    base), the grids the stages made under `root`, and the model card with the gate verdicts."""
    package.mkdir()
    shutil.copy2(root / paths.DELTA, package / "delta.safetensors")
    shutil.copy2(root / paths.PROMPTS, package / "prompts.json")
    for name, data in (extra_json or {}).items():
        write_json(data, package / name)
    write_json(pipeline, package / "pipeline.json")
    grids = []
    for name, folder in GRIDS.items():
        if (root / folder / name).is_file():
            shutil.copy2(root / folder / name, package / name)
            grids.append(name)
    gates = gate_results(metrics, params.registry.gates)
    write_model_card(package / "model_card.md", params, metrics, gates, lineage, grids)
    if card_extra:
        with open(package / "model_card.md", "a") as card:
            card.write(card_extra)
    return package


def run(params: Params, root: Path) -> dict:
    started = time.time()  # the stage run's start time in MLflow: the work's, not the logging's
    metrics_path = root / paths.EVALUATE_METRICS
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} is missing: run `trust evaluate` first")
    metrics = evaluate_metrics.read(root)
    _, delta_meta = read_delta(root / paths.DELTA)
    base = params.model.base
    lineage = {
        "base_model": str(params.model.base),
        "base_fingerprint": delta_meta.get("base_fingerprint"),
        "method": delta_meta.get("method"),
        "concept": params.concept_name,
        "git_commit": git_commit(root),
        "dvc": dvc_stage_hashes(root),
        "params": {"concept": params.model_dump(mode="json")["concept"], "localize": params.localize.model_dump(mode="json"),
                   "finetune": params.finetune.model_dump(mode="json"), "evaluate": params.evaluate.model_dump(mode="json")},
        "prompts_file": str(paths.PROMPTS),
    }
    section = {"register": params.registry.model_dump(mode="json")}
    with stage_run("register", section, root, base_fingerprint=lineage["base_fingerprint"], started=started) as run_:
        with staged_dir(root / paths.REGISTER_DIR) as out:
            package = build_package(out / "package", root, params, metrics, lineage,
                                    {"base_model": str(base.resolve()), "base_fingerprint": lineage["base_fingerprint"],
                                     "method": lineage["method"], "kind": delta_meta["format"]})
            result = register_version(params, root, package, metrics, lineage, run_id=run_.run_id)
            write_json(result, out / "registration.json")
            shutil.copy2(package / "model_card.md", out / "model_card.md")
        run_.log_metrics({"version": float(result["version"]), "gates_passed": float(result["passed"])})
        run_.log_artifact(root / paths.REGISTER_DIR / "model_card.md")
    if not result["passed"]:
        gates = result["gates"]  # which failed: result["failed_gates"] (registry.failed_gates)
        failed = [f"{k} (value {gates[k]['value']:.3f}, limit {gates[k]['limit']}"
                  + (f": {gates[k]['note']})" if gates[k].get("note") else ")") for k in result["failed_gates"]]
        raise GateFailed(f"{params.registry.model_name} v{result['version']} registered as candidate only; "
                         f"failed gate(s): {', '.join(failed)}; production unchanged")
    return result
