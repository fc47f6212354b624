"""Prefect tasks: one per DVC stage. DVC decides whether the stage is stale and versions
its outputs; the task streams the stage's output to the console and to Prefect's logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task

# Exit code of `trust register` when a gate fails: a verdict, not a transient failure.
GATE_FAILED_EXIT = 3


class StageFailed(RuntimeError):
    def __init__(self, stage: str, code: int, tail: list[str]):
        self.stage, self.code = stage, code
        super().__init__(f"stage {stage!r} failed (exit {code}):\n" + "\n".join(tail[-15:]))


def _retry_unless_verdict(task, task_run, state) -> bool:
    """Retry transient failures; never retry a failed gate or invalid input (exit 2)."""
    try:
        state.result()
    except StageFailed as e:
        return e.code not in (GATE_FAILED_EXIT, 2)
    except Exception:
        return True
    return False


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # `trust` and `dvc` from this interpreter's environment, whatever PATH the caller had.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def repro_stage(stage: str, root: Path, env: dict[str, str], log) -> dict:
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        line = line.rstrip()
        if line and "it/s]" not in line and "s/it]" not in line:
            lines.append(line)
            log(line)
    code = proc.wait()
    if code != 0 and any(f"exited with {GATE_FAILED_EXIT}" in ln for ln in lines):
        code = GATE_FAILED_EXIT  # dvc exits 255 whatever the command's code was
    if code != 0:
        raise StageFailed(stage, code, lines)
    ran = any(f"Running stage '{stage}'" in ln for ln in lines)
    return {"stage": stage, "ran": ran}


@task(name="dvc-stage", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_verdict,
      task_run_name="{stage}")
def run_stage(stage: str, root: str, env_extra: dict[str, str] | None = None) -> dict:
    logger = get_run_logger()
    return repro_stage(stage, Path(root), stage_env(env_extra), logger.info)
