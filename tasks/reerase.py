"""Prefect tasks of the `reerase` flow (flows/reerase.py).

Each task runs library stage functions (`trust.stages.<stage>.run(params, folder)`) in a
folder of the re-erasure's workspace, with a params.yaml derived from the project's: paths
made absolute, `model.base` pointing at the model the stage must start from, the successful
prompts added to the forget (target) prompts. Nothing in the project's own DVC outputs
(`data/`, `outputs/`, `metrics/`) is touched; the registry and tracking store are shared.
"""

from __future__ import annotations

import importlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE
from pydantic import BaseModel

from trust import tracking
from trust.config import Params, load_params
from trust.stages import paths

SUCCESSFUL = paths.EVALUATE_DIR / "successful_prompts.json"
DELTA_FROM_PARENT = paths.FINETUNE_DIR / "delta_from_parent.safetensors"
PARENT_TAG = "lineage.parent_version"


# -- derived parameters ----------------------------------------------------------------
def _absolute(model: BaseModel, root: Path) -> BaseModel:
    """Every relative Path field (model.base, world.*_dir, attack sets, ...) made absolute against `root`."""
    updates = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            updates[name] = _absolute(value, root)
        elif isinstance(value, Path) and not value.is_absolute():
            updates[name] = (root / value).resolve()
    return model.model_copy(update=updates)


def _template(prompt: str) -> str:
    """A literal prompt as a concept template: braces escaped, so it expands to itself."""
    return prompt.replace("{", "{{").replace("}", "}}")


def derive_params(params: Params, root: Path, path: Path, base: Path, add_targets: list[str] = ()) -> Params:
    """Write (and validate) the params.yaml a workspace stage runs with; returns it loaded."""
    p = _absolute(params, root)
    concept = p.concept.model_copy(update={"target": list(dict.fromkeys(
        [*p.concept.target, *(_template(t) for t in add_targets)]))})
    p = p.model_copy(update={"model": p.model.model_copy(update={"base": Path(base).resolve()}), "concept": concept})
    raw = p.model_dump(mode="json", by_alias=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# derived by the reerase flow from the project's params.yaml; do not edit\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)


def successful_prompts(folder: Path, limit: int) -> list[dict]:
    """The evaluate stage's successful prompts (list of {prompt, attack, seeds}), most hits first."""
    f = folder / SUCCESSFUL
    rows = json.loads(f.read_text()) if f.is_file() else []
    rows = sorted(rows, key=lambda r: -len(r.get("seeds") or []))
    seen, out = set(), []
    for r in rows:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            out.append(r)
    return out[:limit]


def force_prompts(folder: Path, params: Params, prompts: list[str]) -> dict:
    """Make every successful prompt part of the forget set (target.train) and measured first
    (front of target.eval), whatever the prompts stage's cap and split drew."""
    from trust.concepts import _anchor, labels_of

    f = folder / paths.PROMPTS
    sets = json.loads(f.read_text())
    rows = {r["prompt"]: r for split in ("train", "eval") for r in sets["target"][split]}
    rng = np.random.default_rng(params.prompts.seed)
    forced = []
    for p in prompts:
        if p not in rows:
            labels = labels_of(p)
            rows[p] = {"prompt": p, "anchor": _anchor(params.concept, labels, rng), "labels": labels}
        forced.append(rows[p])
    names = set(prompts)
    sets["target"]["train"] = [r for r in sets["target"]["train"] if r["prompt"] not in names] + forced
    sets["target"]["eval"] = forced + [r for r in sets["target"]["eval"] if r["prompt"] not in names]
    sets["reerase"] = {"forced_prompts": prompts}
    f.write_text(json.dumps(sets, indent=2, sort_keys=True) + "\n")
    return {"target_train": len(sets["target"]["train"]), "target_eval": len(sets["target"]["eval"])}


# -- tracking --------------------------------------------------------------------------
@contextmanager
def group_run(name: str, tags: dict[str, str]) -> Iterator[mlflow.ActiveRun]:
    """A nested MLflow run grouping stage runs (e.g. the production check's prompts + evaluate)."""
    run = tracking.start_child_run(name, tags)
    try:
        yield run
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def _stage(stage: str, params: Params, folder: Path):
    return importlib.import_module(f"trust.stages.{stage}").run(params, folder)


TASK = dict(cache_policy=NO_CACHE, persist_result=False)


# -- tasks -----------------------------------------------------------------------------
@task(name="resolve-production", **TASK)
def resolve_production(ref: str) -> dict:
    """Pin MODEL@ALIAS to a version and check its package against the manifest before using it."""
    from trust.delta import read_delta
    from trust.registry import DELTA, PIPELINE, RegistryError, check_files, resolve, source_folder

    mv = resolve(ref)
    folder = source_folder(mv)
    if not folder.is_dir():
        raise RegistryError(f"{ref} (v{mv.version}): package folder {folder} does not exist")
    bad = [f"{r['path']} ({r['status']})" for r in check_files(folder) if r["status"] != "ok"]
    if bad:
        raise RegistryError(f"{ref} (v{mv.version}): package {folder} does not match its manifest: {', '.join(bad)}; "
                            f"refusing to re-erase from it (run `trust lineage {ref}`)")
    spec = json.loads((folder / PIPELINE).read_text())
    _, meta = read_delta(folder / DELTA)
    out = {"ref": ref, "name": mv.name, "version": int(mv.version), "pinned": f"{mv.name}/{mv.version}",
           "package": str(folder), "delta": str(folder / DELTA), "base_model": spec["base_model"],
           "base_fingerprint": spec.get("base_fingerprint"), "package_sha256": (mv.tags or {}).get("package_sha256"),
           "method": meta.get("method")}
    get_run_logger().info("%s is version %s (package %s)", ref, mv.version, folder)
    return out


@task(name="check-production", **TASK)
def check_production(prod: dict, params_path: str, root: str, folder: str) -> dict:
    """Evaluate the production model (recorded base + its delta) with the current prompt and attack
    sets, exactly as the evaluate stage does; returns its target rate and successful prompts."""
    params, root_p, ws = load_params(params_path), Path(root), Path(folder)
    p = derive_params(params, root_p, ws / "params.yaml", Path(prod["base_model"]))
    (ws / paths.DELTA).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(prod["delta"], ws / paths.DELTA)
    gate = params.registry.gates.max_target_rate
    with group_run(f"check {prod['pinned']}", {"trust.stage": "check", "trust.checked_version": prod["pinned"]}) as run:
        _stage("prompts", p, ws)
        metrics = _stage("evaluate", p, ws)
        rate, asr = leak_rate(metrics)
        found = successful_prompts(ws, params.reerase.max_added_prompts)
        client = MlflowClient()
        for k, v in {"target_rate": float(metrics["target_rate"]), "leak_rate": rate,
                     "successful_prompts": len(found)}.items():
            client.log_metric(run.info.run_id, k, v)
        client.set_tag(run.info.run_id, "trust.exceeds_gate", str(rate > gate).lower())
    get_run_logger().info("%s: leak rate %.3f (target rate %.3f, attack success rates %s; gate %.3f), "
                          "%d successful prompt(s)", prod["pinned"], rate, float(metrics["target_rate"]), asr or "-",
                          gate, len(found))
    return {"target_rate": float(metrics["target_rate"]), "leak_rate": rate, "asr": asr, "gate": gate,
            "exceeds": rate > gate, "successful": found, "keep": metrics.get("keep", {}), "folder": str(ws)}


def leak_rate(metrics: dict) -> tuple[float, dict]:
    """How often the concept comes back: the highest of the no-attack target rate and every
    attack's success rate (`asr` in metrics/evaluate.json, when the evaluation ran attacks)."""
    asr = {k: float(v) for k, v in (metrics.get("asr") or {}).items() if v is not None and v == v}
    return max([float(metrics["target_rate"]), *asr.values()]), asr


@task(name="materialise-production", **TASK)
def materialise(prod: dict, folder: str, device: str) -> dict:
    """Rebuild the production model (base + delta) and save it as a model folder to fine-tune from."""
    from trust.models.loading import save_model
    from trust.registry import load_registered
    from trust.utils.fs import staged_dir

    parts = load_registered(prod["pinned"], device=device)
    with staged_dir(Path(folder)) as tmp:
        save_model(parts, tmp)
    return {"folder": folder, "fingerprint": parts.fingerprint()}


@task(name="reerase-prompts", **TASK)
def erase_prompts(params_path: str, folder: str, forced: list[str]) -> dict:
    p, ws = load_params(params_path), Path(folder)
    counts = _stage("prompts", p, ws)
    return counts | force_prompts(ws, p, forced)


@task(name="reerase-stage", task_run_name="{stage}", **TASK)
def stage(stage: str, params_path: str, folder: str) -> dict:
    """One library stage in the workspace folder (localize, finetune, evaluate)."""
    result = _stage(stage, load_params(params_path), Path(folder))
    return {k: v for k, v in result.items() if not isinstance(v, (list, dict))} if isinstance(result, dict) else {}


@task(name="compose-delta", **TASK)
def compose_delta(prod: dict, folder: str, device: str) -> dict:
    """Express the new weights against the ORIGINAL base: base + production delta + new delta,
    saved as one delta whose base fingerprint is the original base's (what `trust load` needs).
    The delta relative to the production model is kept as delta_from_parent.safetensors."""
    import torch

    from trust.delta import apply_delta, read_delta, save_delta
    from trust.models import load_model

    ws = Path(folder)
    parts = load_model(prod["base_model"], device=device)
    base_fp = parts.fingerprint()
    if prod.get("base_fingerprint") and base_fp != prod["base_fingerprint"]:
        raise ValueError(f"base model {prod['base_model']} has fingerprint {base_fp}, but {prod['pinned']} was made "
                         f"from {prod['base_fingerprint']}")
    base_state = {k: v.detach().clone() for k, v in parts.unet.state_dict().items()}
    apply_delta(parts, Path(prod["delta"]))
    shutil.move(ws / paths.DELTA, ws / DELTA_FROM_PARENT)
    apply_delta(parts, ws / DELTA_FROM_PARENT)  # refuses a delta not made from the materialised production model
    _, meta = read_delta(ws / DELTA_FROM_PARENT)
    with torch.no_grad():
        summary = save_delta(base_state, parts.unet.state_dict(), ws / paths.DELTA, {
            "base_fingerprint": base_fp, "method": meta.get("method"), "concept": meta.get("concept"),
            "parent_version": prod["pinned"], "parent_fingerprint": meta.get("base_fingerprint"),
            "parent_package_sha256": prod.get("package_sha256") or ""})
    return summary | {"base_fingerprint": base_fp, "parent_fingerprint": meta.get("base_fingerprint")}


@task(name="reerase-register", **TASK)
def register(prod: dict, check: dict, params_path: str, root: str, folder: str) -> dict:
    """Package the composed delta and register it: alias `candidate`, `production` only if the
    gates pass; the version's lineage names the production version it started from."""
    from trust.delta import read_delta
    from trust.registry import register_version
    from trust.stages.register import build_package
    from trust.utils.fs import staged_dir
    from trust.utils.safetensors_io import write_json

    params, root_p, ws = load_params(params_path), Path(root), Path(folder)
    metrics = json.loads((ws / paths.METRICS / "evaluate.json").read_text())
    _, meta = read_delta(ws / paths.DELTA)
    added = [r["prompt"] for r in check["successful"]]
    lineage = {
        "base_model": prod["base_model"], "base_fingerprint": meta.get("base_fingerprint"),
        "method": meta.get("method"), "concept": params.concept.name, "git_commit": tracking.git_commit(root_p),
        "flow": "reerase", "parent_version": prod["pinned"], "parent_fingerprint": meta.get("parent_fingerprint"),
        "parent_package_sha256": prod.get("package_sha256"), "parent_target_rate": check["target_rate"], "parent_leak_rate": check["leak_rate"],
        "added_prompts": added, "workspace": str(ws),
        "params": {"concept": params.concept.model_dump(mode="json"), "localize": params.localize.model_dump(mode="json"),
                   "finetune": params.finetune.model_dump(mode="json"), "evaluate": params.evaluate.model_dump(mode="json")},
        "prompts_file": str(paths.PROMPTS),
    }
    # Logged as the register run's params, so `trust lineage` prints the parent version.
    section = {"register": params.registry.model_dump(mode="json"),
               "reerase": {"parent_version": prod["pinned"], "parent_leak_rate": check["leak_rate"],
                           "added_prompts": len(added)}}
    with tracking.stage_run("register", section, ws, base_fingerprint=lineage["base_fingerprint"]) as run_:
        with staged_dir(ws / paths.REGISTER_DIR) as out:
            package = build_package(
                out / "package", ws, params, metrics, lineage,
                {"base_model": prod["base_model"], "base_fingerprint": lineage["base_fingerprint"],
                 "method": lineage["method"], "kind": "trust-delta-v1", "parent_version": prod["pinned"]},
                extra_json={"successful_prompts.json": check["successful"]},
                card_extra=f"\n## Re-erasure\n\nFine-tuned again from `{prod['pinned']}` (leak rate "
                           f"{check['leak_rate']:.3f} > gate {check['gate']}), with {len(added)} successful "
                           "prompt(s) added to the forget prompts:\n\n" + "".join(f"- `{a}`\n" for a in added))
            result = register_version(params, root_p, package, metrics, lineage, run_id=run_.run_id)
            write_json(result, out / "registration.json")
            shutil.copy2(package / "model_card.md", out / "model_card.md")
        client = MlflowClient()
        client.set_model_version_tag(result["model_name"], str(result["version"]), PARENT_TAG, prod["pinned"])
        verdict = "passed, promoted to production" if result["passed"] else \
            "failed: " + ", ".join(result["failed_gates"]) + "; production unchanged"
        client.update_model_version(result["model_name"], str(result["version"]),
                                    description=f"re-erasure of '{params.concept.name}' from {prod['pinned']}; "
                                                f"gates {verdict}")
        run_.log_metrics({"version": float(result["version"]), "gates_passed": float(result["passed"])})
        run_.log_artifact(ws / paths.REGISTER_DIR / "model_card.md")
    return result
