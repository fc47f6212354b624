"""MLflow tracking: stage runs nest under the flow's parent run, with params, tags and status."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from trust import tracking
from trust.config import Params, TrackingParams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clean_runs(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    monkeypatch.delenv(tracking.PREFECT_ENV, raising=False)
    yield
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def store(tmp_path, monkeypatch, empty_mlflow_db):
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    lock = {"schema": "2.0", "stages": {"finetune": {"cmd": "trust finetune", "deps": [{"path": "a", "md5": "1"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert tracking.configure(TrackingParams(experiment="t"), tmp_path) == uri
    return tmp_path


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": "[1, 2]", "d": "x"}


def test_configure_defaults_to_project_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.configure(TrackingParams(experiment="e"), tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    exp = MlflowClient(uri).get_experiment_by_name("e")
    assert exp.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not the UI's GenAI mode
    assert tracking.configure(TrackingParams(experiment="e"), tmp_path) == uri  # idempotent


def test_stage_runs_nest_under_flow(store, monkeypatch):
    monkeypatch.setenv(tracking.PREFECT_ENV, "prefect-123")
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lamb")  # what `dvc exp run` sets for its stages
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    artifact = store / "curve.csv"
    artifact.write_text("step,loss\n0,1\n")
    with tracking.flow_run("unlearn", Params(), store) as parent:
        parent_id = parent.info.run_id
        assert os.environ[tracking.PARENT_ENV] == parent_id
        with tracking.stage_run("finetune", {"lr": 0.1, "sub": {"k": [1, 2]}}, store, base_fingerprint="sha256:ab") as s:
            s.log_metrics({"a": 1, "b": {"c": 2.5}, "skip": "text", "none": None})
            s.log_metrics({"loss": 0.5}, step=3)
            s.log_curve("curve", [3.0, 2.0, 1.0])
            s.log_artifact(artifact)
            s.log_artifact(artifact, subdir="more")
        with pytest.raises(RuntimeError, match="boom"):
            with tracking.stage_run("evaluate", {"seed": 0}, store):
                raise RuntimeError("boom")
    assert tracking.PARENT_ENV not in os.environ

    client = MlflowClient()
    run = client.get_run(s.run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["mlflow.parentRunId"] == parent_id
    assert tags["trust.stage"] == "finetune" and tags["mlflow.runName"] == "finetune"
    assert tags["trust.base_fingerprint"] == "sha256:ab"
    assert tags["prefect.flow_run_id"] == "prefect-123"
    assert tags["dvc.exp_name"] == "brisk-lamb" and "dvc.exp_baseline_rev" not in tags
    assert tags["git.commit"] == "unknown"  # tmp_path is not a git checkout
    entry = yaml.safe_load((store / "dvc.lock").read_text())["stages"]["finetune"]
    assert tags["dvc.stage_hash"] == hashlib.md5(json.dumps(entry, sort_keys=True).encode()).hexdigest()
    assert params == {"lr": "0.1", "sub.k": "[1, 2]"}
    assert run.data.metrics == {"a": 1.0, "b.c": 2.5, "loss": 0.5, "curve": 1.0}
    assert [(m.step, m.value) for m in client.get_metric_history(s.run_id, "curve")] == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert client.get_metric_history(s.run_id, "loss")[0].step == 3
    assert {a.path for a in client.list_artifacts(s.run_id)} == {"curve.csv", "more"}
    assert run.info.status == "FINISHED"

    failed = client.search_runs([run.info.experiment_id], "tags.`trust.stage` = 'evaluate'")[0]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mlflow.parentRunId"] == parent_id
    assert "dvc.stage_hash" not in failed.data.tags  # no dvc.lock entry for that stage
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_stage_run_in_a_fresh_process_nests_under_parent(store):
    """A DVC/Prefect stage subprocess: the parent is not on its run stack, only in the env."""
    client = MlflowClient()
    exp = client.get_experiment_by_name("t")
    parent = client.create_run(exp.experiment_id, run_name="unlearn")
    code = (  # MLFLOW_TRACKING_URI (set by `store`) is the configuration the subprocess inherits
        "from pathlib import Path; from trust import tracking\n"
        f"with tracking.stage_run('finetune', {{'steps': 3}}, Path({str(store)!r})) as s: print(s.run_id)\n"
    )
    env = {**os.environ, tracking.PARENT_ENV: parent.info.run_id}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    child = client.get_run(out.stdout.strip().splitlines()[-1])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.experiment_id == exp.experiment_id  # kept beside its parent
    assert child.data.params == {"steps": "3"} and child.info.status == "FINISHED"


def test_standalone_stage_run_and_failed_flow(store):
    with tracking.stage_run("prompts", {}, store) as s:
        pass
    assert "mlflow.parentRunId" not in MlflowClient().get_run(s.run_id).data.tags
    with pytest.raises(KeyError):
        with tracking.flow_run("unlearn", Params(), store) as parent:
            raise KeyError("x")
    assert MlflowClient().get_run(parent.info.run_id).info.status == "FAILED"
    assert tracking.PARENT_ENV not in os.environ


def test_git_info_in_the_project(root):
    info = tracking.git_info(root)
    assert len(info["git.commit"]) == 40 and info["git.dirty"] in ("true", "false")
    assert tracking.git_commit(root) == info["git.commit"]


def test_tests_never_use_the_projects_prefect_home():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert not Path(os.environ["PREFECT_HOME"]).resolve().is_relative_to(root)


def test_a_stage_run_lasts_as_long_as_its_work_not_its_logging(store, monkeypatch):
    """A stage opens its MLflow run after the work (so only finished work is logged); `started` gives the
    run the work's start time: the run shows the stage's real duration, nested in the flow's parent
    (same process) and in the parent named by TRUST_PARENT_RUN_ID (a stage subprocess), or standalone."""
    import time

    client = MlflowClient()
    started = time.time() - 120  # the work took two minutes
    with tracking.flow_run("unlearn", Params(), store) as parent:
        with tracking.stage_run("finetune", {"lr": 0.1}, store, started=started) as s:
            s.log_metrics({"a": 1.0})
    nested = client.get_run(s.run_id)
    assert nested.data.tags["mlflow.parentRunId"] == parent.info.run_id and nested.data.params == {"lr": "0.1"}
    assert nested.info.start_time == int(started * 1000) and nested.info.status == "FINISHED"
    assert 120_000 <= nested.info.end_time - nested.info.start_time < 180_000
    assert nested.info.run_name == "finetune" and nested.info.experiment_id == client.get_run(parent.info.run_id).info.experiment_id

    monkeypatch.setenv(tracking.PARENT_ENV, parent.info.run_id)  # a stage subprocess knows its parent from here
    with tracking.stage_run("evaluate", {}, store, started=started) as s2:
        pass
    sub = client.get_run(s2.run_id)
    assert sub.data.tags["mlflow.parentRunId"] == parent.info.run_id and sub.info.start_time == int(started * 1000)
    monkeypatch.delenv(tracking.PARENT_ENV)
    with pytest.raises(RuntimeError):
        with tracking.stage_run("register", {}, store, started=started) as s3:
            raise RuntimeError("boom")
    alone = client.get_run(s3.run_id)
    assert "mlflow.parentRunId" not in alone.data.tags and alone.info.status == "FAILED"
    assert alone.info.start_time == int(started * 1000)
