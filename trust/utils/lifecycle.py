"""Processes that never outlive the command that started them, and state a dead one left behind.

A pipeline run is a tree: `trust run` -> the flow (and Prefect's temporary server) -> `dvc repro`
-> `trust <stage>`. A `kill -9` of the top leaves the rest running as orphans that hold DVC's
lock and write outputs nobody waits for. So (Linux; elsewhere the same minus parent-death
signals):
- `supervise` runs the command's real work in a child of its own process group, which gets
  SIGTERM when the supervisor dies (prctl PR_SET_PDEATHSIG), and kills whatever is left of that
  group when the child ends, however it ended;
- `terminate_group_on_sigterm` makes that child pass SIGTERM on to its whole group and unwind
  (`Killed`, a SystemExit: context managers discard staged outputs and end MLflow runs KILLED);
- a stage process run by DVC (`exit_with_parent`) gets SIGTERM when DVC dies (the group's end
  reaches it anyway; this covers a DVC killed on its own). No preexec hook is used where threads
  run (the flow's process): a forked child of a threaded process must not run Python before exec;
- `tracking.end_dead_runs` ends the MLflow runs a process killed before it could end them
  (RUNNING forever otherwise) once that process is gone. (DVC itself drops rwlock entries of
  dead processes; the lock stayed busy only while orphans held it.)
Torch-free.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SUPERVISED_ENV = "TRUST_SUPERVISED"
_PR_SET_PDEATHSIG = 1


class Killed(SystemExit):
    """SIGTERM arrived: unwind (outputs staged so far are discarded, runs end KILLED), exit 143."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _prctl_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    """A Popen preexec_fn: the child gets SIGTERM when the process that started it dies."""
    _prctl_pdeathsig(signal.SIGTERM)


def exit_with_parent() -> None:
    """This process gets SIGTERM (and unwinds, `Killed`) when its parent dies; if the parent is
    already gone (it died before this call), unwind now."""
    parent = os.getppid()
    _raise_killed_on_sigterm()
    _prctl_pdeathsig(signal.SIGTERM)
    if os.getppid() != parent:  # reparented between our start and the prctl: the parent is gone
        raise Killed()


def _raise_killed_on_sigterm() -> None:
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: unwinding must not be interrupted again
        raise Killed()

    signal.signal(signal.SIGTERM, handler)


def terminate_group_on_sigterm(grace_s: float = 15.0) -> None:
    """In a supervised child (its own process group's leader): SIGTERM is passed on to every
    process of the group (DVC, the stage, Prefect's server) before this one unwinds."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            os.killpg(os.getpgrp(), signal.SIGTERM)
        except OSError:
            pass
        # Unwinding ends the runs KILLED; but at exit Prefect drains its log queue into the API
        # server that was just ended with the group, and would wait forever: exit hard after a grace.
        timer = threading.Timer(grace_s, os._exit, (128 + signal.SIGTERM,))
        timer.daemon = True  # still runs while threading's shutdown waits on Prefect's drain
        timer.start()
        raise Killed()

    signal.signal(signal.SIGTERM, handler)
    _prctl_pdeathsig(signal.SIGTERM)


def supervise(argv: list[str], env: dict[str, str] | None = None, grace_s: float = 10.0) -> int:
    """Run `argv` in a new process group that dies with this process; forward Ctrl-C and SIGTERM
    to it; when it ends, end what is left of its group. Returns its exit code (128+N for signal N)."""
    def child_setup() -> None:
        os.setpgid(0, 0)
        die_with_parent()

    proc = subprocess.Popen(argv, env={**(env or os.environ), SUPERVISED_ENV: "1"},
                            preexec_fn=child_setup)  # noqa: PLW1509 (no threads in the supervisor)
    pgid = proc.pid

    def forward(signum, frame):
        try:
            os.killpg(pgid, signum)
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        end_group(pgid, grace_s)
    return code if code >= 0 else 128 - code


def end_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM to what is left of process group `pgid`, SIGKILL after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except OSError:  # the group is empty: nothing left
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except OSError:
                return
            time.sleep(0.1)


def supervised() -> bool:
    return os.environ.get(SUPERVISED_ENV) == "1"


# -- what a dead process leaves ------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime (after the command name)


def process_token(pid: int | None = None) -> str:
    """This process (or `pid`) as `pid:start-time`, so a reused pid is not mistaken for it."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid) or '?'}"


def alive(token: str) -> bool:
    """Whether the process a `process_token` names is still running (on this machine)."""
    pid_s, _, start = str(token).partition(":")
    try:
        pid = int(pid_s)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return start in ("", "?") or _start_time(pid) in (None, start)
