"""MLflow model registry: versions of tuned-weights packages, aliases and gates.

A package is a folder (delta.safetensors, pipeline.json, model_card.md, ...). It is copied
to an immutable, content-addressed folder with a manifest of sha256 hashes (what lineage
re-checks) and registered with `create_model_version(source=...)`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trust.config import GateParams, Params
from trust.tracking import flatten
from trust.utils.safetensors_io import write_json

MANIFEST = "manifest.json"
CANDIDATE, PRODUCTION = "candidate", "production"


def gate_results(metrics: dict, gates: GateParams) -> dict:
    drop = max((k["drop"] for k in metrics.get("keep", {}).values()), default=0.0)
    out = {
        "max_target_rate": {"value": metrics["target_rate"], "limit": gates.max_target_rate,
                            "passed": metrics["target_rate"] <= gates.max_target_rate},
        "max_preservation_drop": {"value": drop, "limit": gates.max_preservation_drop,
                                  "passed": drop <= gates.max_preservation_drop},
    }
    out["passed"] = all(v["passed"] for v in out.values())
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def package_hash(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def register_version(params: Params, root: Path, package_dir: Path, metrics: dict, lineage: dict,
                     run_id: str | None) -> dict:
    name = params.registry.model_name
    hashes = file_hashes(package_dir)
    digest = package_hash(hashes)
    store = Path(root).resolve() / "mlartifacts" / "registry" / name / digest[:16]
    if not store.exists():
        tmp = store.with_name(store.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(package_dir, tmp)
        write_json(hashes, tmp / MANIFEST)
        tmp.rename(store)
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"trust erasure of '{params.concept.name}'")
    gates = gate_results(metrics, params.registry.gates)
    tags = {f"lineage.{k}": str(v)[:5000] for k, v in flatten(lineage).items()}
    tags |= {f"gate.{k}": str(v["passed"]).lower() for k, v in gates.items() if isinstance(v, dict)}
    tags |= {"package_sha256": digest, "gates_passed": str(gates["passed"]).lower()}
    mv = client.create_model_version(name, source=str(store), run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    aliases = [CANDIDATE]
    if gates["passed"]:
        client.set_registered_model_alias(name, PRODUCTION, mv.version)
        aliases.append(PRODUCTION)
    return {"model_name": name, "version": int(mv.version), "aliases": aliases, "gates": gates,
            "passed": gates["passed"], "source": str(store), "package_sha256": digest}


def resolve(ref: str):
    """`NAME@ALIAS` or `NAME/VERSION` -> ModelVersion."""
    client = MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        if "/" in ref:
            name, version = ref.rsplit("/", 1)
            return client.get_model_version(name, version)
    except MlflowException as e:
        name = ref.split("@")[0].split("/")[0]
        try:
            known = [f"{v.version} (aliases {list(v.aliases)})" for v in client.search_model_versions(f"name='{name}'")]
        except MlflowException:
            known = []
        raise ValueError(f"{ref}: not in the registry ({e.message.splitlines()[0]}); "
                         f"versions of {name}: {known or 'none'}") from None
    raise ValueError(f"{ref!r}: expected MODEL@ALIAS (e.g. trust-world-circle@production) or MODEL/VERSION")


def load_registered(ref: str, device: str = "cpu"):
    """Rebuild a ready pipeline's parts: the base model plus the registered delta."""
    from trust.delta import apply_delta
    from trust.models import load_model

    folder = Path(resolve(ref).source)
    if not (folder / "pipeline.json").is_file():
        raise FileNotFoundError(f"{ref}: package folder {folder} is missing or has no pipeline.json")
    spec = json.loads((folder / "pipeline.json").read_text())
    parts = load_model(spec["base_model"], device=device)
    return apply_delta(parts, folder / "delta.safetensors")


def write_model_card(path: Path, params: Params, metrics: dict, gates: dict, lineage: dict, grid_paths: list[str]) -> None:
    c = params.concept
    lines = [f"# Erasure of '{c.name}' ({c.kind}) with {lineage.get('method')}", "",
             f"Base model `{lineage.get('base_model')}` (fingerprint `{lineage.get('base_fingerprint')}`).", "",
             "## Metrics (no attack)", "", "| concept | base | erased | change |", "|---|---|---|---|",
             f"| target {c.detect} | {metrics['target_rate_base']:.2f} | {metrics['target_rate']:.2f} | "
             f"{metrics['target_rate'] - metrics['target_rate_base']:+.2f} |"]
    for k, v in metrics.get("keep", {}).items():
        lines.append(f"| kept {k} | {v['base']:.2f} | {v['tuned']:.2f} | {-v['drop']:+.2f} |")
    lines += ["", "## Gates", "", "| gate | value | limit | result |", "|---|---|---|---|"]
    for k, v in gates.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v['value']:.3f} | {v['limit']} | {'pass' if v['passed'] else 'FAIL'} |")
    lines += ["", "## Lineage", "", f"- git commit: `{lineage.get('git_commit')}`",
              f"- prompts: `{lineage.get('prompts_file')}`"]
    lines += [f"- DVC stage `{s}`: `{h}`" for s, h in sorted(lineage.get("dvc", {}).items())]
    lines += ["", "## Fine-tuning parameters", "", "```json",
              json.dumps(lineage.get("params", {}).get("finetune", {}), indent=2), "```", ""]
    lines += [f"![{g}]({g})" for g in grid_paths]
    Path(path).write_text("\n".join(lines) + "\n")
