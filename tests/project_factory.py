"""Throwaway copies of the project for end-to-end tests (reerase, schedule, bad params).

`scratch_project` copies the working tree's project files (tracked, plus untracked source and
data that git does not ignore, minus the pipeline's own outputs) into a folder, applies the tiny
step budget of tests/test_flow.py (`TINY`) and makes it a git repository, as test_flow does.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

from test_flow import TINY  # one tiny budget for every end-to-end test

# Outputs of the pipeline stages (DVC outs) and local clutter: never copied, so the copy starts clean.
SKIP_PREFIXES = ("outputs/", "runs/", "data/prompts.json", "metrics/prompts.json", "metrics/localize.json",
                 "metrics/finetune", "metrics/evaluate.json")
TINY_ATTACKS = {"evaluate": {"attacks": {"run": [], "max_prompts": 1}, "report": False}}


def deep_update(d: dict, updates: dict) -> dict:
    for k, v in updates.items():
        if isinstance(v, dict) and v and isinstance(d.get(k), dict):  # {} replaces
            deep_update(d[k], v)
        else:
            d[k] = v
    return d


def edit_params(project: Path, updates: dict) -> None:
    """Deep-merge `updates` into params.yaml; keys of sections the schema does not have yet are left out."""
    p = yaml.safe_load((project / "params.yaml").read_text())
    deep_update(p, _known(updates, p))
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def _known(updates: dict, current: dict) -> dict:
    """Drop optional attack/report settings when this checkout's schema has no such keys."""
    from trust.config import EvaluateParams

    out = {k: dict(v) if isinstance(v, dict) else v for k, v in updates.items()}
    ev = out.get("evaluate")
    if isinstance(ev, dict):
        for k in list(ev):
            if k not in EvaluateParams.model_fields:
                ev.pop(k)
    return out


def project_files(root: Path) -> list[str]:
    git = ["git", "--no-optional-locks", "-C", str(root), "ls-files"]
    tracked = subprocess.run(git, capture_output=True, text=True, check=True).stdout.split("\n")
    others = subprocess.run(git + ["--others", "--exclude-standard"], capture_output=True, text=True,
                            check=True).stdout.split("\n")
    keep = [f for f in others if f and not f.startswith(SKIP_PREFIXES) and not f.endswith(".whl")]
    return sorted({f for f in tracked + keep if f and (root / f).is_file()})


def scratch_project(dest: Path, root: Path, updates: dict | None = None, git: bool = True) -> Path:
    import shutil

    for f in project_files(root):
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dest / f)
    edit_params(dest, deep_update(deep_update(copy.deepcopy(TINY), copy.deepcopy(TINY_ATTACKS)), updates or {}))
    if git:
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.email=ci@trust", "-c", "user.name=ci", "commit", "-qm", "scratch"]):
            subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def env(project: Path, **extra: str) -> dict[str, str]:
    """The environment `make` gives `trust`: state inside the project, telemetry off, one thread."""
    e = dict(os.environ)
    for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        e.pop(k, None)
    e.update(PATH=str(Path(sys.executable).parent) + os.pathsep + e["PATH"], PREFECT_HOME=str(project / ".prefect"),
             PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
             DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", TRUST_NUM_THREADS="1", HF_HUB_OFFLINE="1",
             TRANSFORMERS_VERBOSITY="error")
    e.update(extra)
    return e


def trust(project: Path, *args: str, timeout: int = 600, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "trust"), *args], cwd=project, env=env(project, **extra),
                          capture_output=True, text=True, timeout=timeout)


UNLEARN_SCRIPT = """
import os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from trust import tracking
from trust.config import load_params
from trust.stages import evaluate, finetune, localize, prompts, register
root = Path.cwd()
p = load_params(root / "params.yaml", root=root)
tracking.configure(p.tracking, root)
with tracking.flow_run("unlearn", p, root):
    prompts.run(p, root); localize.run(p, root); finetune.run(p, root); evaluate.run(p, root)
    register.run(p, root)
"""


def unlearn_in_process(project: Path) -> None:
    """The unlearn flow's five stages as library calls in one process (no DVC/Prefect start-up):
    registers version 1 with the gates of params.yaml. ~4x faster than `trust run` on 2 cores."""
    res = subprocess.run([sys.executable, "-c", UNLEARN_SCRIPT], cwd=project, env=env(project), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]


IDENTITY_SCRIPT = """
from pathlib import Path
from trust import tracking
from trust.config import load_params
from trust.delta import save_delta
from trust.models import load_model
from trust.registry import register_version
from trust.utils.safetensors_io import write_json
root = Path.cwd()
p = load_params(root / "params.yaml", root=root)
tracking.configure(p.tracking, root)
base = p.model.base  # resolved at load_params
parts = load_model(base)
state = parts.unet.state_dict()
pkg = root / ".cache" / "identity-package"
pkg.mkdir(parents=True, exist_ok=True)
save_delta(state, state, pkg / "delta.safetensors", {"base_fingerprint": parts.fingerprint(), "method": "none"})
write_json({"base_model": str(base.resolve()), "base_fingerprint": parts.fingerprint(), "method": "none",
            "kind": "trust-delta-v1"}, pkg / "pipeline.json")
# the identity keeps everything: one kept concept measured unchanged (an empty "keep" is
# "not measured", which the preservation gate fails)
metrics = {"target_rate_base": 1.0, "target_rate": 0.0,
           "keep": {"kept": {"base": 1.0, "tuned": 1.0, "drop": 0.0, "images": 4}}}
print(register_version(p, root, pkg, metrics, {"base_model": str(base), "method": "none"}, run_id=None)["aliases"])
"""


def register_identity(project: Path) -> None:
    """Register the base model itself (an empty delta) as version 1 with alias production: a
    registry to re-check in seconds, for tests of the orchestration rather than of the erasure."""
    res = subprocess.run([sys.executable, "-c", IDENTITY_SCRIPT], cwd=project, env=env(project), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "production" in res.stdout, (res.stdout + res.stderr)[-4000:]


def client(project: Path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return MlflowClient()
