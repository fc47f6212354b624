"""The finetune stage killed mid-run (SIGKILL, no clean-up) resumes from its last checkpoint.

Real process, real kill: `trust finetune` runs in a subprocess on a scratch copy of the project
and is killed once its checkpoint has advanced. The earlier stage output must be untouched, the
rerun must resume where the checkpoint says, and its delta must equal an uninterrupted run's bit
for bit. The other runs are in-process (same code, no start-up cost).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from project_factory import edit_params, env, scratch_project
from trust import tracking
from trust.config import load_params
from trust.stages import finetune, localize, paths, prompts

STEPS, EVERY = 30, 3
RUN = {"finetune": {"steps": STEPS, "checkpoint_every": EVERY, "references": 4, "batch_size": 4}}


def _finetune(project, **updates) -> dict:
    edit_params(project, {"finetune": {**RUN["finetune"], **updates}})
    p = load_params(project / "params.yaml", root=project)
    tracking.configure(p.tracking, project)
    return finetune.run(p, project, progress=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory, root):
    proj = scratch_project(tmp_path_factory.mktemp("resume"), root, RUN, git=False)
    p = load_params(proj / "params.yaml", root=proj)
    tracking.configure(p.tracking, proj)
    prompts.run(p, proj)
    localize.run(p, proj)
    return proj


def test_killed_finetune_resumes_and_matches_an_uninterrupted_run(project):
    # An earlier, finished fine-tune (other settings): its outputs must survive the killed run.
    _finetune(project, steps=2)
    earlier = (project / paths.DELTA).read_bytes()
    edit_params(project, RUN)

    state = project / paths.FINETUNE_CHECKPOINTS / "state.json"
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "trust"), "finetune"], cwd=project,
                            env=env(project), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed_at = time.time() + 300, 0
    try:
        while time.time() < deadline and proc.poll() is None:
            if state.is_file():
                try:
                    killed_at = json.loads(state.read_text())["step"]
                except (ValueError, KeyError):  # caught mid-write: read again
                    killed_at = 0
                if killed_at >= 2 * EVERY:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the fine-tune finished before it could be killed"
    assert (project / paths.DELTA).read_bytes() == earlier  # nothing half-written over the earlier output

    saved_step = json.loads(state.read_text())["step"]
    assert killed_at <= saved_step < STEPS and saved_step % EVERY == 0
    metrics = _finetune(project)
    assert metrics["resumed_from"] == saved_step and metrics["steps"] == STEPS
    assert not (project / paths.FINETUNE_CHECKPOINTS).exists()  # finished runs clean their checkpoint
    resumed = load_file(project / paths.DELTA)

    assert _finetune(project)["resumed_from"] == 0  # the same settings from scratch, uninterrupted
    fresh = load_file(project / paths.DELTA)
    assert resumed and resumed.keys() == fresh.keys()
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)


class _Stop(Exception):
    pass


def _first_step(project, monkeypatch, at: int | None = None) -> int:
    """Run the stage until the step after `at` (None: stop at the first step it runs) and return the
    step training started from: 0 for a fresh start, the checkpoint's step for a resume."""
    from trust.methods.registry import method_class

    cls = method_class("trust")
    real, seen = cls.step, []

    def step(self, i):
        seen.append(i)
        if at is None or i >= at:
            raise _Stop()
        return real(self, i)

    monkeypatch.setattr(cls, "step", step)
    try:
        with pytest.raises(_Stop):
            finetune.run(load_params(project / "params.yaml", root=project), project, progress=False)
    finally:
        monkeypatch.setattr(cls, "step", real)
    return seen[0]


# one setting of each section the digest covers: that the stage refuses a checkpoint whose digest
# differs; tests/test_resume_digest.py changes every setting of both sections alone against the digest
CHANGED = [("finetune.lr", {"finetune": {"lr": 0.004}}), ("localize.xi", {"localize": {"xi": 2.5}})]


def test_checkpoint_of_other_settings_is_not_resumed(project, monkeypatch):
    """A real checkpoint (step 3 of a run stopped at step 4) resumes only under the very settings
    that made it: any one fine-tuning or localisation setting changed starts from scratch."""
    shutil.rmtree(project / paths.FINETUNE_CHECKPOINTS, ignore_errors=True)
    before = (project / "params.yaml").read_text()
    edit_params(project, {"finetune": {**RUN["finetune"], "to_bar": {"enabled": False}}})
    assert _first_step(project, monkeypatch, at=EVERY + 1) == 0
    assert json.loads((project / paths.FINETUNE_CHECKPOINTS / "state.json").read_text())["step"] == EVERY
    same = (project / "params.yaml").read_text()
    try:
        for key, change in CHANGED:
            edit_params(project, change)
            assert _first_step(project, monkeypatch) == 0, f"resumed although {key} changed"
            (project / "params.yaml").write_text(same)
        assert _first_step(project, monkeypatch) == EVERY  # the same settings: resumed
    finally:
        (project / "params.yaml").write_text(before)
        shutil.rmtree(project / paths.FINETUNE_CHECKPOINTS, ignore_errors=True)


BAR = {"enabled": True, "check_every": 1, "samples_per_prompt": 1, "max_prompts": 1, "sample_steps": 2}


def test_bar_reached_stops_early_and_records_the_checks(project):
    edit_params(project, {"register": {"gates": {"max_target_rate": 1.0, "max_preservation_drop": 1.0}}})
    try:
        metrics = _finetune(project, steps=10, to_bar={**BAR, "margin": 0.0})
    finally:
        edit_params(project, {"register": {"gates": {"max_target_rate": 0.1, "max_preservation_drop": 0.1}}})
    assert metrics["steps"] == 1 and metrics["bar"]["reached"]  # every rate is within a gate of 1.0
    assert metrics["bar"]["checks"][0]["step"] == 1 and "val_target" in metrics["bar"]["checks"][0]


def test_bar_not_reached_fails_writes_nothing_and_the_run_is_failed(project, monkeypatch):
    from trust.methods.stopping import BarNotReached

    _finetune(project, steps=2, to_bar={"enabled": False})
    earlier = {p: (project / p).read_bytes() for p in (paths.DELTA, paths.METRICS / "finetune.json")}
    # max_target_rate 0 with a margin: the stop threshold is below 0, never reached
    edit_params(project, {"register": {"gates": {"max_target_rate": 0.0}}})
    try:
        with pytest.raises(BarNotReached, match=r"step budget \(finetune.steps\) ran out .* Nothing was written"):
            _finetune(project, steps=3, to_bar={**BAR, "margin": 0.05})
        # the stage command: a verdict, exit 3 (the flow's task never retries it), not a crash
        from typer.testing import CliRunner

        from trust.cli import app

        monkeypatch.chdir(project)
        res = CliRunner().invoke(app, ["finetune"])
        assert res.exit_code == 3, res.output
        assert "before the bar was reached" in " ".join(res.output.split())
    finally:
        edit_params(project, {"register": {"gates": {"max_target_rate": 0.1}}})
    assert {p: (project / p).read_bytes() for p in earlier} == earlier  # the earlier outputs, untouched
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("trust").experiment_id],
                                      "tags.`trust.stage` = 'finetune'", order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FAILED" and "val_target" in runs[0].data.metrics
