"""MLflow tracking: one parent run per pipeline (flow) run, one nested run per stage.

Stages run as separate processes (DVC, Prefect), so the parent is handed down through the
environment (`TRUST_PARENT_RUN_ID`), not through MLflow's in-process run stack. Every run is
tagged with what identifies its inputs (git commit, the stage's dvc.lock hash, the base-model
fingerprint), so a registered model can be traced back to code, data and parameters.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import socket
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, RunStatus

from trust.tracking_store import store_uri
from trust.utils.lifecycle import Killed, alive, process_token

if TYPE_CHECKING:  # trust.config imports torch; tracking must stay light for stage subprocesses
    from trust.config import Params, TrackingParams

PARENT_ENV = "TRUST_PARENT_RUN_ID"
PREFECT_ENV = "TRUST_PREFECT_FLOW_RUN_ID"
PARENT_TAG = "mlflow.parentRunId"
PROCESS_TAG, HOST_TAG = "trust.process", "trust.host"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
BATCH = 1000  # MLflow's limit on metrics per log_batch call


# -- helpers -------------------------------------------------------------------------
def flatten(d: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1, "c": [2]}}` -> `{"a.b": 1, "a.c": "[2]"}`: MLflow params, metrics and tags are flat.
    A list of mappings (several concepts) is flattened by index: `{"concept": [{"name": "x"}]}` ->
    `{"concept.0.name": "x"}` (one JSON string would be cut at MLflow's length limit)."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v) and prefix == "":
            out.update(flatten({str(i): x for i, x in enumerate(v)}, key))
        elif isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def _param_value(v) -> str:
    return str(v)[:MAX_PARAM_CHARS]


def _number(v) -> float | None:
    """Metric value or None: MLflow metrics are floats; strings, None and containers are skipped."""
    return float(v) if isinstance(v, numbers.Number) and not isinstance(v, complex) else None


def git_info(root: Path) -> dict[str, str]:
    """Commit and dirtiness of the checkout at `root`; "unknown" outside a git repository.

    `--no-optional-locks` keeps `git status` from rewriting the index while others work in it.
    """
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": "unknown" if status is None else str(bool(status)).lower()}


def git_commit(root: Path) -> str:
    return git_info(root)["git.commit"]


def git_dirty(root: Path) -> bool:
    return git_info(root)["git.dirty"] == "true"


def dvc_stage_hashes(root: Path) -> dict[str, str]:
    """md5 of each stage's entry in dvc.lock: changes whenever the stage's cmd, deps, params or outs do."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    return {name: hashlib.md5(json.dumps(entry, sort_keys=True).encode()).hexdigest() for name, entry in stages.items()}


def dvc_stage_hash(root: Path, stage: str) -> str | None:
    return dvc_stage_hashes(root).get(stage)


# -- configuration -------------------------------------------------------------------
def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"  # the UI's own values


def configure(tracking: TrackingParams, root: Path) -> str:
    """Point MLflow at the project's store and experiment; returns the tracking URI.

    The default store and artifact folder live inside the project, so a run on a laptop
    needs no server and leaves nothing elsewhere on disk.
    """
    root = Path(root).resolve()
    uri = store_uri(tracking, root)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is None:
        location = (root / "mlartifacts").as_uri() if _is_local_store(uri) else None
        exp_id = client.create_experiment(tracking.experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
    # MLflow 3's UI opens an experiment with no kind in GenAI mode (traces, prompts); these are training runs
    if exp is None or EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return uri


# -- runs ----------------------------------------------------------------------------
DVC_EXP_TAGS = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}  # dvc/env.py


def _common_tags(root: Path) -> dict[str, str]:
    tags = git_info(root)
    if os.environ.get(PREFECT_ENV):
        tags["prefect.flow_run_id"] = os.environ[PREFECT_ENV]
    # `dvc exp run` sets these for the stages it runs: an experiment's MLflow runs say which one they are
    for env, tag in DVC_EXP_TAGS.items():
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    # which process owns the run: a run whose process was killed (kill -9) is ended by the next one
    tags[PROCESS_TAG], tags[HOST_TAG] = process_token(), socket.gethostname()
    return tags


def end_dead_runs(experiment: str) -> list[str]:
    """End as KILLED every RUNNING run of the named experiment whose process
    on this machine is gone: a kill -9 leaves its runs RUNNING forever otherwise. Each gets a
    `trust.ended_by` tag saying so. Returns their run ids."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    ended = []
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        t = run.data.tags
        if t.get(HOST_TAG) == host and t.get(PROCESS_TAG) and not alive(t[PROCESS_TAG]):
            client.set_tag(run.info.run_id, "trust.ended_by",
                           f"process {t[PROCESS_TAG]} was gone (killed); ended by process {process_token()}")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            ended.append(run.info.run_id)
    return ended


@contextmanager
def _ended(active: mlflow.ActiveRun) -> Iterator[mlflow.ActiveRun]:
    """End the run FINISHED, or FAILED (KILLED on Ctrl-C or SIGTERM) when the block raises (the
    exception propagates)."""
    run_id = active.info.run_id
    try:
        yield active
    except (KeyboardInterrupt, Killed):  # Ctrl-C, or SIGTERM (a parent that died, `kill`)
        _end(run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as e:
        # Prefect's flow engine turns SIGTERM into its own TerminationSignal (not imported here:
        # stage processes do not load Prefect)
        _end(run_id, RunStatus.to_string(RunStatus.KILLED if type(e).__name__ == "TerminationSignal"
                                          else RunStatus.FAILED))
        raise
    _end(run_id, RunStatus.to_string(RunStatus.FINISHED))


def _end(run_id: str, status: str) -> None:
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:  # not on this thread's stack any more: end it through the client
        MlflowClient().set_terminated(run_id, status)


@contextmanager
def flow_run(name: str, params: Params, root: Path) -> Iterator[mlflow.ActiveRun]:
    """Parent run for one pipeline run; stage processes started inside nest under it."""
    root = Path(root).resolve()
    configure(params.tracking, root)
    end_dead_runs(params.tracking.experiment)  # runs a killed earlier run left RUNNING
    tags = {"trust.flow": name, "trust.concept": params.concept_name, "trust.base_model": str(params.model.base),
            **_common_tags(root)}
    active = mlflow.start_run(run_name=name, tags=tags)
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = active.info.run_id
    try:
        with _ended(active):
            dump = params.model_dump(mode="json", by_alias=True)
            mlflow.log_params({k: _param_value(v) for k, v in flatten(dump).items()})
            yield active
    finally:
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous


class StageRun:
    """What a stage logs to its run; every call names the run explicitly (no global state)."""

    def __init__(self, run_id: str):
        self._run_id = run_id
        self._client = MlflowClient()

    @property
    def run_id(self) -> str:
        return self._run_id

    def _log(self, metrics: list[Metric]) -> None:
        for i in range(0, len(metrics), BATCH):
            self._client.log_batch(self._run_id, metrics=metrics[i : i + BATCH])

    def log_metrics(self, d: dict, step: int | None = None) -> None:
        """Nested dicts become dotted names; values that are not numbers are skipped."""
        now = int(time.time() * 1000)
        items = [(k, _number(v)) for k, v in flatten(d).items()]
        self._log([Metric(k, v, now, step or 0) for k, v in items if v is not None])

    def log_curve(self, name: str, values: list[float]) -> None:
        """A training curve: value i at step i."""
        now = int(time.time() * 1000)
        self._log([Metric(name, float(v), now, i) for i, v in enumerate(values) if not math.isnan(float(v))])

    def log_dataset(self, name: str, rows: list[dict], source: Path, context: str) -> None:
        """A prompt set as an MLflow dataset input (the run page's Datasets; its digest tells two
        runs on the same prompts apart from two on different ones)."""
        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways" (both the same one)
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(pd.DataFrame(rows), source=str(source), name=name)
        self._client.log_inputs(self._run_id, datasets=[DatasetInput(
            ds._to_mlflow_entity(), tags=[InputTag(key="mlflow.data.context", value=context)])])

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self._run_id, str(path), artifact_path=subdir or path.name)
        elif path.is_file():
            self._client.log_artifact(self._run_id, str(path), artifact_path=subdir)
        else:
            raise FileNotFoundError(f"artifact {path} does not exist")


def start_child_run(name: str, tags: dict[str, str], started: float | None = None) -> mlflow.ActiveRun:
    """Start a run under the flow's parent run, wherever that parent is known from. `started`
    (epoch seconds): when the work the run records began, so its duration is the work's, not the
    logging's (a stage opens its run after the work, to log only what finished)."""
    parent = os.environ.get(PARENT_ENV)
    if started is not None:
        return _start_run_at(name, tags, started, parent)
    if mlflow.active_run() is not None:  # in the flow's own process: nest under the active run
        return mlflow.start_run(run_name=name, nested=True, tags=tags)
    if parent:
        # A stage subprocess (DVC, Prefect): the parent is known only from the environment.
        # The child goes into the parent's experiment so the run tree stays in one place.
        exp_id = MlflowClient().get_run(parent).info.experiment_id
        return mlflow.start_run(run_name=name, parent_run_id=parent, experiment_id=exp_id, tags=tags)
    return mlflow.start_run(run_name=name, tags=tags)


def _start_run_at(name: str, tags: dict[str, str], started: float, parent_env: str | None) -> mlflow.ActiveRun:
    # the fluent API has no start time: create the run through the client, then make it the active one
    client = MlflowClient()
    active = mlflow.active_run()
    parent = active.info.run_id if active is not None else parent_env
    if parent:  # the child goes into the parent's experiment, so the run tree stays in one place
        exp_id = client.get_run(parent).info.experiment_id
        tags = {**tags, "mlflow.parentRunId": parent}
    else:
        exp_id = mlflow.tracking.fluent._get_experiment_id()
    run = client.create_run(exp_id, start_time=int(started * 1000), tags=tags, run_name=name)
    return mlflow.start_run(run_id=run.info.run_id, nested=active is not None)


@contextmanager
def group_run(name: str, tags: dict[str, str]) -> Iterator[mlflow.ActiveRun]:
    """A run under the flow's parent run that groups stage runs (e.g. a production check's
    prompts + evaluate): FINISHED, or FAILED (KILLED on Ctrl-C) when the block raises."""
    with _ended(start_child_run(name, tags)) as run:
        yield run


@contextmanager
def stage_run(stage: str, section: dict, root: Path, base_fingerprint: str | None = None,
              started: float | None = None) -> Iterator[StageRun]:
    """One stage's run, nested under `TRUST_PARENT_RUN_ID` when set, else standalone.

    Call `configure` first (the stage CLI does). `section` is the stage's params section,
    logged as params so runs can be compared on exactly what the stage read. `started` (time.time()
    when the stage's work began) makes the run's start time, so MLflow shows the stage's real duration.
    """
    root = Path(root).resolve()
    tags = {"trust.stage": stage, **_common_tags(root)}
    stage_hash = dvc_stage_hash(root, stage)
    if stage_hash:
        tags["dvc.stage_hash"] = stage_hash
    if base_fingerprint:
        tags["trust.base_fingerprint"] = base_fingerprint

    active = start_child_run(stage, tags, started)
    with _ended(active):
        flat = flatten(section)
        if flat:
            mlflow.log_params({k: _param_value(v) for k, v in flat.items()})
        yield StageRun(active.info.run_id)
