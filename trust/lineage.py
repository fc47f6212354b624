"""Lineage for auditors: from a registered version back to the runs, code, data and base model.

`lineage` collects what the registry and tracking store recorded; `verify` re-hashes the
package and compares it with the hashes the registry recorded at registration (not with the
package's own manifest, which a tamperer can rewrite), so a reviewer can tell whether the files
on disk are still the ones registered.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trust.registry import FILES_TAG, MANIFEST, PIPELINE, check_version, resolve, source_folder
from trust.registry_aliases import alias_history
from trust.tracking import PARENT_TAG


def _when(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds") if ms else None


# What an auditor reads first from the evaluate stage's run (its other metrics are in MLflow).
SCORE_PREFIXES = ("target_rate", "pre_asr", "asr.", "keep.", "fid.delta", "world_fd.delta")


def _run_row(run, registered_hashes: dict[str, str] | None = None) -> dict:
    """One stage run. `dvc_stage_hash` is the stage's dvc.lock entry as the version recorded it at
    registration (DVC writes a stage's entry after the stage ran, so the run's own tag, taken when it
    started, is the entry of the run before: `dvc_stage_hash_at_start`); None where the version did
    not record the stage (the register stage itself, a version from outside DVC)."""
    t = run.data.tags
    stage = t.get("trust.stage")
    registered = (registered_hashes or {}).get(stage) if stage else None
    return {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
            "stage": stage, "dvc_stage_hash": registered, "dvc_stage_hash_at_start": t.get("dvc.stage_hash"),
            "git_commit": t.get("git.commit"), "git_dirty": t.get("git.dirty"), "start": _when(run.info.start_time),
            "scores": {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(SCORE_PREFIXES)}}


def _registered_hashes(tags: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("lineage.dvc."): v for k, v in tags.items() if k.startswith("lineage.dvc.")}


def _gates(tags: dict[str, str]) -> dict[str, dict[str, str]]:
    """gate -> {value, limit, passed} from the version's `gate.<name>.<field>` tags."""
    out: dict[str, dict[str, str]] = {}
    for k, v in tags.items():
        if k.startswith("gate."):
            gate, _, field = k.removeprefix("gate.").rpartition(".")
            out.setdefault(gate, {})[field] = v
    return dict(sorted(out.items()))


def lineage(ref: str) -> dict:
    """Version -> creating run -> its parent (flow) run and sibling stage runs -> package files -> base."""
    mv = resolve(ref)
    client = MlflowClient()
    folder = source_folder(mv)
    out: dict = {
        "version": {"name": mv.name, "version": int(mv.version), "aliases": sorted(mv.aliases or []),
                    "created": _when(mv.creation_timestamp), "source": str(folder), "tags": dict(mv.tags or {})},
        "run": None, "parent_run": None, "stage_runs": [], "params": {},
    }
    hashes = _registered_hashes(dict(mv.tags or {}))
    out["gates"] = _gates(dict(mv.tags or {}))
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
        except MlflowException:
            out["run"] = {"run_id": mv.run_id, "error": "run not found in the tracking store"}
        else:
            out["run"] = _run_row(run, hashes)
            out["params"] = dict(run.data.params)
            parent_id = run.data.tags.get(PARENT_TAG)
            if parent_id:
                try:
                    parent = client.get_run(parent_id)
                    out["parent_run"] = {"run_id": parent_id, "name": parent.info.run_name, "status": parent.info.status,
                                         "prefect_flow_run_id": parent.data.tags.get("prefect.flow_run_id")}
                except MlflowException:
                    out["parent_run"] = {"run_id": parent_id, "error": "parent run not found"}
                siblings = client.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                              order_by=["attributes.start_time ASC"])
                out["stage_runs"] = [_run_row(r, hashes) for r in siblings]
    manifest = folder / MANIFEST
    recorded = (mv.tags or {}).get(FILES_TAG)
    out["files"] = json.loads(recorded) if recorded else json.loads(manifest.read_text()) if manifest.is_file() else {}
    pipeline = folder / PIPELINE
    spec = json.loads(pipeline.read_text()) if pipeline.is_file() else {}
    out["base_model"] = spec.get("base_model") or mv.tags.get("lineage.base_model")
    out["base_fingerprint"] = spec.get("base_fingerprint") or mv.tags.get("lineage.base_fingerprint")
    out["method"] = spec.get("method") or mv.tags.get("lineage.method")
    return out


def verify(ref: str) -> list[dict]:
    """Re-hash the version's package against the registry's record: rows {path, expected, actual,
    status: ok|modified|missing|unexpected|rewritten} (registry.check_version)."""
    return check_version(resolve(ref))


def format_lineage(d: dict) -> str:
    # pragma: no mutate block (text layout only; `make mutate` leaves it out, see README)
    v = d["version"]
    lines = [f"model {v['name']} version {v['version']}  aliases: {', '.join(v['aliases']) or 'none'}",
             f"  created {v['created']}", f"  package {v['source']}",
             f"  package sha256 {v['tags'].get('package_sha256', '?')}",
             f"  gates passed: {v['tags'].get('gates.passed', '?')}"]
    lines += [f"  alias {h}" for h in alias_history(v["tags"])]
    for g, r in d.get("gates", {}).items():
        lines.append(f"    {g}: {r.get('value', '?')} (limit {r.get('limit', '?')}) "
                     f"{'passed' if r.get('passed') == 'true' else 'FAILED' if r.get('passed') == 'false' else '?'}")
    lines += [f"base model {d.get('base_model')}", f"  fingerprint {d.get('base_fingerprint')}",
              f"  method {d.get('method')}"]
    run = d.get("run")
    if run:
        lines.append(f"registered by run {run['run_id']} ({run.get('name')}, {run.get('status')}, "
                     f"git {run.get('git_commit')})" if "error" not in run else f"run {run['run_id']}: {run['error']}")
    else:
        lines.append("registered outside a tracked run (no run id)")
    parent = d.get("parent_run")
    if parent:
        extra = f", prefect flow run {parent['prefect_flow_run_id']}" if parent.get("prefect_flow_run_id") else ""
        lines.append(f"flow run {parent['run_id']} ({parent.get('name', parent.get('error'))}{extra})")
        for s in d.get("stage_runs", []):
            dirty = " (dirty)" if s.get("git_dirty") == "true" else ""
            lines.append(f"  stage {s['stage'] or s['name']:<10} run {s['run_id']}  {s['status']:<8} "
                         f"dvc {s['dvc_stage_hash'] or '-'}  git {(s['git_commit'] or '-')[:12]}{dirty}")
            if s.get("scores"):
                lines.append("    " + ", ".join(f"{k} {v:.3g}" for k, v in s["scores"].items()))
    if d.get("params"):
        lines.append("parameters:")
        lines += [f"  {k} = {val}" for k, val in sorted(d["params"].items())]
    lines.append("package files (sha256 at registration):")
    lines += [f"  {p}  {h}" for p, h in sorted(d.get("files", {}).items())]
    return "\n".join(lines)
