"""Registering a re-erased model: its package, a lineage that names the parent (production)
version, and the registry version (alias `candidate`, `production` only if the gates pass)."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow import MlflowClient

from trust import tracking
from trust.config import Params
from trust.stages import evaluate_metrics, paths

PARENT_TAG = "lineage.parent_version"


def reerase_lineage(prod: dict, check: dict, params: Params, root: Path, folder: Path, delta_meta: dict) -> dict:
    """The new version's lineage: the original base, the parent version and how it leaked, the
    prompts added, and the params of the stages that made it."""
    return {
        "base_model": prod["base_model"], "base_fingerprint": delta_meta.get("base_fingerprint"),
        "method": delta_meta.get("method"), "concept": params.concept.name, "git_commit": tracking.git_commit(root),
        "flow": "reerase", "parent_version": prod["pinned"], "parent_fingerprint": delta_meta.get("parent_fingerprint"),
        "parent_package_sha256": prod.get("package_sha256"), "parent_target_rate": check["target_rate"],
        "parent_leak_rate": check["leak_rate"], "added_prompts": [r["prompt"] for r in check["successful"]],
        "workspace": str(folder),
        "params": {"concept": params.concept.model_dump(mode="json"), "localize": params.localize.model_dump(mode="json"),
                   "finetune": params.finetune.model_dump(mode="json"), "evaluate": params.evaluate.model_dump(mode="json")},
        "prompts_file": str(paths.PROMPTS),
    }


def _card(prod: dict, check: dict, added: list[str]) -> str:
    return (f"\n## Re-erasure\n\nFine-tuned again from `{prod['pinned']}` (leak rate {check['leak_rate']:.3f} > gate "
            f"{check['gate']}), with {len(added)} successful prompt(s) added to the forget prompts:\n\n"
            + "".join(f"- `{a}`\n" for a in added))


def register(prod: dict, check: dict, params: Params, root: Path, folder: Path) -> dict:
    """Package the composed delta in `folder` and register it (a `register` stage run nested
    under the flow's run); returns the registration (model name, version, aliases, gates)."""
    from trust.delta import read_delta
    from trust.registry import register_version
    from trust.stages.register import build_package
    from trust.utils.fs import staged_dir
    from trust.utils.safetensors_io import write_json

    ws = Path(folder)
    metrics = evaluate_metrics.read(ws)
    _, meta = read_delta(ws / paths.DELTA)
    lineage = reerase_lineage(prod, check, params, root, ws, meta)
    added = lineage["added_prompts"]
    # Logged as the register run's params, so `trust lineage` prints the parent version.
    section = {"register": params.registry.model_dump(mode="json"),
               "reerase": {"parent_version": prod["pinned"], "parent_leak_rate": check["leak_rate"],
                           "added_prompts": len(added)}}
    with tracking.stage_run("register", section, ws, base_fingerprint=lineage["base_fingerprint"]) as run_:
        with staged_dir(ws / paths.REGISTER_DIR) as out:
            package = build_package(
                out / "package", ws, params, metrics, lineage,
                {"base_model": prod["base_model"], "base_fingerprint": lineage["base_fingerprint"],
                 "method": lineage["method"], "kind": meta["format"], "parent_version": prod["pinned"]},
                extra_json={"successful_prompts.json": check["successful"]}, card_extra=_card(prod, check, added))
            result = register_version(params, root, package, metrics, lineage, run_id=run_.run_id)
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
