"""The `unlearn` flow end to end on the built-in world, with a tiny step budget.

Runs `trust run` (Prefect ephemeral server, DVC stages, MLflow store) in a scratch git copy
of the project; the tests share it and run in file order.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prefect_db import flow_run_count as _flow_run_count
from prefect_db import latest_flow_run as _latest_flow_run

TINY = {
    "finetune": {"steps": 4, "references": 4, "batch_size": 4, "checkpoint_every": 2, "to_bar": {"enabled": False}},
    "evaluate": {"samples_per_prompt": 1, "max_prompts": 1, "steps": 5, "attacks": {"run": [], "max_prompts": 1}},
    "localize": {"batch_size": 4},
    # tiny budgets (1 image of 5 sampling steps) measure nothing: no base-rate floor (tested in test_registry)
    "register": {"gates": {"max_target_rate": 1.0, "max_preservation_drop": 1.0, "min_base_target_rate": 0.0}},
}


def _edit(project: Path, updates: dict) -> None:
    def merge(d: dict, u: dict) -> None:
        for k, v in u.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                merge(d[k], v)
            else:
                d[k] = v

    p = yaml.safe_load((project / "params.yaml").read_text())
    merge(p, updates)
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def _run(project: Path) -> tuple[int, str, list[str]]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(PATH=str(Path(sys.executable).parent) + os.pathsep + env["PATH"], PREFECT_HOME=str(project / ".prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", TRUST_NUM_THREADS="1")
    res = subprocess.run([str(Path(sys.executable).parent / "trust"), "run"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    return res.returncode, out, re.findall(r"Running stage '([a-z_]+)'", out)


def _client(project: Path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return MlflowClient()


@pytest.fixture(scope="module")
def project(tmp_path_factory, root):
    dest = tmp_path_factory.mktemp("project")
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dest / f)
    _edit(dest, TINY)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=ci@trust", "-c", "user.name=ci", "commit", "-qm", "scratch"],
                # what `make dvc-local` writes for the project (Makefile): temp/queued experiments need it
                [sys.executable, "-m", "dvc", "config", "--local", "core.site_cache_dir",
                 str(dest / ".dvc" / "site-cache")]):
        subprocess.run(cmd, cwd=dest, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return dest


def test_full_flow_runs_every_stage_and_registers(project):
    code, out, ran = _run(project)
    assert code == 0, out[-3000:]
    assert ran == ["prompts", "localize", "finetune", "evaluate", "register"]  # world stages: shipped, up to date
    client = _client(project)
    mv = client.get_model_version_by_alias("trust-world-circle", "production")
    assert str(mv.version) == "1" and set(mv.aliases) == {"candidate", "production"}
    parent = client.search_runs(client.get_experiment_by_name("trust").experiment_id,
                                filter_string="tags.`trust.flow` = 'unlearn'")
    assert len(parent) == 1
    # the parent run carries the run's headline numbers and verdict (the MLflow runs table)
    assert parent[0].data.tags["trust.verdict"] == "PASSED"
    assert {"target_rate", "target_rate_base", "worst_kept_drop", "version", "gates_passed"} <= set(parent[0].data.metrics)
    assert parent[0].data.metrics["version"] == 1.0 and parent[0].data.metrics["gates_passed"] == 1.0
    children = client.search_runs(parent[0].info.experiment_id,
                                  filter_string=f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert sorted(r.data.tags["trust.stage"] for r in children) == sorted(ran)
    assert all(r.data.tags["trust.base_fingerprint"].startswith("sha256:") for r in children if r.data.tags["trust.stage"] != "prompts")
    # the prompt sets are the runs' dataset inputs (MLflow's Datasets), with their context
    inputs = {r.data.tags["trust.stage"]: {(d.dataset.name, [t.value for t in d.tags][0])
                                           for d in client.get_run(r.info.run_id).inputs.dataset_inputs} for r in children}
    assert inputs["prompts"] == {("prompts:circle", "training")}
    assert inputs["evaluate"] == {("attacks:world_circle.csv", "evaluation")}
    assert (project / "outputs" / "register" / "model_card.md").is_file()
    # the verdict, once: the terminal panel and the flow run's Markdown artifact
    assert "unlearn: PASSED" in out and "PASSED: trust-world-circle v1 registered" in out
    fr = _latest_flow_run(project)
    assert fr["state"] == "COMPLETED"
    md = fr["artifacts"]["unlearn-circle"]["markdown"]
    assert md.startswith("# unlearn: PASSED: trust-world-circle v1 registered")
    assert "| max_target_rate |" in md and "target rate: base" in md and "candidate, production (registry (now))" in md


def test_second_run_with_nothing_changed_skips_every_stage(project):
    code, out, ran = _run(project)
    assert code == 0, out[-3000:]
    assert ran == []
    assert "stages run: none" in out and "no flow run started" in out
    assert "unlearn: PASSED" in out  # the end panel still says where things stand
    # a no-op starts no flow (no Prefect server, ~15 s) and adds no MLflow run
    client = _client(project)
    exp = client.get_experiment_by_name("trust").experiment_id
    assert len(client.search_runs(exp, filter_string="tags.`trust.flow` = 'unlearn'")) == 1
    from mlflow.entities import ViewType

    assert not client.search_runs(exp, filter_string="tags.`trust.flow` = 'unlearn'", run_view_type=ViewType.DELETED_ONLY)
    assert _flow_run_count(project) == 1


def _tree(pid: int) -> set[int]:
    """`pid` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += children.get(p, [])
    return out


def _outputs(project: Path) -> dict[str, bytes]:
    return {p.relative_to(project).as_posix(): p.read_bytes() for d in ("data", "outputs", "metrics", "models")
            for p in sorted((project / d).rglob("*")) if p.is_file()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_trust_run_ends_its_whole_tree_loses_nothing_and_the_rerun_resumes(project):
    """A finetune parameter changed, and `trust run` killed -9 while finetune runs: no process of its
    tree is left (DVC, the stage, Prefect's temporary server), every output and metric is as
    before, the flow's MLflow run does not stay RUNNING; the rerun reruns exactly what is
    downstream of the change, resumes fine-tuning from its checkpoint and registers v2."""
    import signal
    import time

    _edit(project, {"finetune": {"lr": 0.004, "steps": 40}})
    before = _outputs(project)
    ckpt = project / ".cache" / "finetune" / "state.json"
    ckpt.unlink(missing_ok=True)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "PREFECT_HOME": str(project / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TRUST_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(project / "killed_run.log", "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "trust"), "run"], cwd=project, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ckpt.is_file(), (project / "killed_run.log").read_text()[-3000:]
    tree = _tree(proc.pid)
    assert len(tree) >= 5  # trust run, the flow, Prefect's server, dvc repro, trust finetune
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while (left := {p for p in tree if Path(f"/proc/{p}").exists()}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
    assert _outputs(project) == before
    assert not list((project / "outputs").glob(".*.partial"))

    code, out, ran = _run(project)
    assert code == 0, out[-3000:]
    assert ran == ["finetune", "evaluate", "register"] and re.search(r"resuming fine-tuning from step [1-9]", out)
    client = _client(project)
    flows = client.search_runs(client.get_experiment_by_name("trust").experiment_id,
                               filter_string="tags.`trust.flow` = 'unlearn'", order_by=["attributes.start_time DESC"])
    assert flows[0].info.status == "FINISHED" and flows[1].info.status == "KILLED"
    assert not [r for r in flows if r.info.status == "RUNNING"]
    assert str(client.get_model_version_by_alias("trust-world-circle", "production").version) == "2"
    _edit(project, {"finetune": {"steps": TINY["finetune"]["steps"]}})  # the later tests' budget


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("stage, edit", [("localize", {"localize": {"seed": 7}}), ("evaluate", {"evaluate": {"seed": 7}})],
                         ids=["localize", "evaluate"])
def test_kill_9_of_a_long_stage_loses_nothing(project, stage, edit):
    """DVC deletes a stage's outputs before running it unless they are `persist`; the stages write
    whole outputs or none. A kill -9 of the stage mid-run leaves every output and metric as it was."""
    import signal
    import time

    original = yaml.safe_load((project / "params.yaml").read_text())
    _edit(project, edit)
    before = _outputs(project)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TRUST_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, victim = time.monotonic() + 120, None
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        for pid in _tree(proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"trust") for a in argv) and stage.encode() in argv:
                victim = pid
    assert victim is not None, f"trust {stage} never started (dvc exit {proc.poll()})"
    time.sleep(4)  # into its work: models loaded, images being made
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=60) != 0
    assert _outputs(project) == before
    assert not list(project.glob("outputs/.*.partial")) and not list(project.glob("outputs/.*.old"))
    (project / "params.yaml").write_text(yaml.safe_dump(original, sort_keys=False))


def test_failed_gate_leaves_production_where_it_was(project):
    # max_asr 0: the prompt set's circles survive 4 training steps for certain (one held-out target
    # image may or may not show one, so max_target_rate 0 alone can pass)
    _edit(project, {"register": {"gates": {"max_target_rate": 0.0, "max_preservation_drop": 0.0, "max_asr": 0.0}}})
    code, out, ran = _run(project)
    assert code == 3, out[-3000:]  # a verdict: the gate exit code, not a crash
    # the gates are also erase-to-a-bar's bar, so finetune's params changed and it reran (and what
    # depends on it); nothing upstream of it did
    assert "register" in ran and set(ran) <= {"finetune", "evaluate", "register"}
    text = " ".join(out.split())
    assert "failed gate(s):" in text and "max_asr" in text and "production unchanged" in text
    client = _client(project)
    assert str(client.get_model_version_by_alias("trust-world-circle", "production").version) == "2"
    assert str(client.get_model_version_by_alias("trust-world-circle", "candidate").version) == "3"
    # One attempt only: a failed gate is a verdict, not a transient failure to retry.
    assert len(client.search_model_versions("name='trust-world-circle'")) == 3
    # Prefect shows the truth: a Failed run whose message names the gate, and an artifact with the verdict
    fr = _latest_flow_run(project)
    assert fr["state"] == "FAILED" and "max_asr" in fr["message"], fr
    md = fr["artifacts"]["unlearn-circle"]["markdown"]
    assert md.startswith("# unlearn: FAILED: gate(s)") and "max_asr" in md.splitlines()[0]
    assert "| max_asr |" in md and "**FAIL**" in md and "v3 is candidate only" in md
    assert "unlearn: FAILED" in out  # the terminal panel
    failed_run = client.search_runs(client.get_experiment_by_name("trust").experiment_id,
                                    filter_string="tags.`trust.flow` = 'unlearn'", order_by=["start_time DESC"])[0]
    assert failed_run.data.tags["trust.verdict"] == "FAILED" and failed_run.data.metrics["gates_passed"] == 0.0


def test_parameter_sweep_runs_as_dvc_experiments(project):
    """Both sweep forms of the README: `dvc exp run evaluate -S finetune.lr=...` in the workspace,
    and `--queue` then `--run-all`, which runs in a temp folder under .dvc/tmp/exps (where a
    relative site cache path broke every stage). Each reruns finetune and evaluate with its
    override and records its params and metrics; targeting `evaluate` registers nothing."""
    import json

    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TRUST_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_SITE_CACHE_DIR", None)
    versions = len(_client(project).search_model_versions("name='trust-world-circle'"))
    dvc = [sys.executable, "-m", "dvc", "exp", "run"]
    res = subprocess.run(dvc + ["evaluate", "-S", "finetune.lr=0.002", "-n", "lr-0.002"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "Running stage 'finetune'" in res.stdout and "Running stage 'register'" not in res.stdout
    for cmd in (dvc + ["evaluate", "--queue", "-n", "lr-0.006", "-S", "finetune.lr=0.006"], dvc + ["--run-all"]):
        res = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    show = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    exps = {e["name"]: e for base in json.loads(show.stdout) for e in (base.get("experiments") or [])}
    for lr in (0.002, 0.006):
        rev = exps[f"lr-{lr}"]["revs"][0]
        assert not rev.get("error"), rev.get("error")
        assert rev["data"]["params"]["params.yaml"]["data"]["finetune"]["lr"] == lr
        assert "target_rate" in rev["data"]["metrics"]["metrics/evaluate.json"]["data"]
    assert len(_client(project).search_model_versions("name='trust-world-circle'")) == versions
