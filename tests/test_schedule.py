"""`trust schedule` against a real Prefect server: the cron deployment of `reerase` is created
and served, one run is triggered with run_deployment and completes with the flow's result.

Processes: `prefect server start` and `trust schedule` (serving) run in their own sessions;
they and every descendant (the runner starts each flow run in a new session) are stopped by
PID in the fixture's teardown, whether the test passed or not.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from project_factory import env, register_identity, scratch_project

NAME = "trust-world-circle"
CRON = "0 4 1 1 *"  # once a year: the test triggers its run by hand
STARTUP_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # psutil missing or the process is gone
        return []


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group and every descendant, then SIGKILL what is left."""
    pids = {p.pid for p in procs}
    for p in procs:
        pids.update(_descendants(p.pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                os.killpg(p.pid, sig)  # started with start_new_session: pgid == pid
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        if all(p.poll() is not None for p in procs) and not any(_alive(pid) for pid in pids):
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie we cannot reap is not running
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return True


def _wait(what: str, check, timeout: float, procs: list[subprocess.Popen], logs: list[Path]):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p, log in zip(procs, logs):
            if p.poll() is not None:
                pytest.fail(f"{what}: process {p.args} exited {p.returncode}:\n{log.read_text()[-3000:]}")
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"{what}: not ready after {timeout} s:\n" + "\n".join(log.read_text()[-2000:] for log in logs))


@pytest.fixture
def served(tmp_path, root):
    """A project with a production model, a Prefect server and `trust schedule` serving it."""
    project = scratch_project(tmp_path / "project", root, git=False)
    register_identity(project)
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect-home"
    server_env = env(project, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                     PREFECT_UI_ENABLED="false")
    serve_env = env(project, PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY="2")
    procs, logs = [], []
    try:
        logs.append(tmp_path / "server.log")
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=server_env, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT, start_new_session=True))
        _wait("prefect server", lambda: urllib.request.urlopen(f"{api}/health", timeout=2).status == 200, STARTUP_S,
              procs, logs)
        logs.append(tmp_path / "serve.log")
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "trust"), "schedule", "--cron", CRON], cwd=project, env=serve_env,
            stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT, start_new_session=True))
        yield {"project": project, "api": api, "home": home, "procs": procs, "logs": logs}
    finally:
        _stop(procs)
        assert all(p.poll() is not None for p in procs)


@pytest.mark.timeout(300)
def test_scheduled_reerase_deployment_runs(served):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    project, procs, logs = served["project"], served["procs"], served["logs"]
    with temporary_settings({PREFECT_API_URL: served["api"], PREFECT_HOME: served["home"]}):
        with get_client(sync_client=True) as client:
            deployment = _wait("deployment reerase/" + NAME,
                               lambda: client.read_deployment_by_name(f"reerase/{NAME}"), STARTUP_S, procs, logs)
            assert [s.schedule.cron for s in deployment.schedules] == [CRON]
            assert deployment.parameters["root"] == str(project)
            # Served means the runner polls for this deployment's runs: wait until it says so.
            _wait("runner", lambda: "is being served" in logs[1].read_text(), STARTUP_S, procs, logs)
            flow_run = run_deployment(f"reerase/{NAME}", timeout=150, poll_interval=2)
            state = client.read_flow_run(flow_run.id).state
            assert state.is_completed(), f"{state}\n{logs[1].read_text()[-4000:]}"
            result = state.result()
    assert result["status"] == "still erased" and result["checked"] == f"{NAME}/1"
    assert Path(result["workspace"]).parent == project / "runs" / "reerase"
    assert json.loads((Path(result["workspace"]) / "reerase.json").read_text())["status"] == "still erased"
