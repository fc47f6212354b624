"""MLflow tracking: one parent run per flow run, one nested run per stage that ran.

The store defaults to the project (`sqlite:///<root>/mlflow.db`, artifacts in
`<root>/mlartifacts`); MLFLOW_TRACKING_URI overrides. Stages run as subprocesses of DVC, so
the parent run id travels in the environment (TRUST_PARENT_RUN_ID).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import mlflow
import yaml

from trust.config import Params, TrackingParams

PARENT_ENV = "TRUST_PARENT_RUN_ID"
PREFECT_ENV = "TRUST_PREFECT_FLOW_RUN_ID"


def configure(tracking: TrackingParams, root: Path) -> str:
    root = Path(root).resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(tracking.experiment) is None:
        local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
        mlflow.create_experiment(tracking.experiment,
                                 artifact_location=(root / "mlartifacts").as_uri() if local else None)
    mlflow.set_experiment(tracking.experiment)
    return uri


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def git_commit(root: Path) -> str:
    res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else "unknown"


def git_dirty(root: Path) -> bool:
    res = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    return bool(res.stdout.strip())


def dvc_stage_hashes(root: Path) -> dict[str, str]:
    """md5 of each stage's dvc.lock entry: changes whenever its deps, params or outs change."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {name: hashlib.md5(json.dumps(entry, sort_keys=True).encode()).hexdigest() for name, entry in stages.items()}


def _tags(root: Path, stage: str | None, base_fingerprint: str | None) -> dict[str, str]:
    tags = {"git.commit": git_commit(root), "git.dirty": str(git_dirty(root)).lower()}
    if stage:
        tags["trust.stage"] = stage
        h = dvc_stage_hashes(root).get(stage)
        if h:
            tags["dvc.stage_hash"] = h
    if base_fingerprint:
        tags["trust.base_fingerprint"] = base_fingerprint
    if os.environ.get(PREFECT_ENV):
        tags["prefect.flow_run_id"] = os.environ[PREFECT_ENV]
    return tags


class StageRun:
    def __init__(self, run):
        self._run = run

    @property
    def run_id(self) -> str:
        return self._run.info.run_id

    def log_metrics(self, d: dict, step: int | None = None) -> None:
        nums = {k: float(v) for k, v in flatten(d).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
        if nums:
            mlflow.log_metrics(nums, step=step)

    def log_curve(self, name: str, values: list[float]) -> None:
        for i, v in enumerate(values):
            mlflow.log_metric(name, float(v), step=i + 1)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=subdir or path.name)
        elif path.is_file():
            mlflow.log_artifact(str(path), artifact_path=subdir)


@contextmanager
def flow_run(name: str, params: Params, root: Path):
    """Parent run of a flow; its id is exported so stage subprocesses nest under it."""
    root = Path(root).resolve()
    previous = os.environ.get(PARENT_ENV)
    with mlflow.start_run(run_name=name, tags=_tags(root, None, None) | {"trust.flow": name}) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params.model_dump(mode="json", by_alias=True)).items()})
        os.environ[PARENT_ENV] = run.info.run_id
        try:
            yield run
        finally:
            if previous is None:
                os.environ.pop(PARENT_ENV, None)
            else:
                os.environ[PARENT_ENV] = previous


@contextmanager
def stage_run(stage: str, section: dict, root: Path, base_fingerprint: str | None = None):
    """A stage's run: nested under the flow's parent run when there is one."""
    root = Path(root).resolve()
    parent = os.environ.get(PARENT_ENV)
    tags = _tags(root, stage, base_fingerprint)
    in_process = mlflow.active_run() is not None
    if parent and not in_process:  # a stage subprocess: attach to the flow's run by tag
        tags["mlflow.parentRunId"] = parent
    run = mlflow.start_run(run_name=stage, tags=tags, nested=in_process)
    try:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(section).items()})
        yield StageRun(run)
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")
