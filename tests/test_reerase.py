"""The `reerase` flow on a tiny world project (`trust reerase`, Prefect ephemeral server).

Version 1 comes from the unlearn stages with the tiny step budget: a weak erasure that the
tiny gates (max_target_rate 1.0) let into production. The tests share the project, in order.
"""

import hashlib
import json
from pathlib import Path

import pytest

from flows.unlearn import artifact_key
from prefect_db import latest_flow_run
from project_factory import client, edit_params, scratch_project, trust, unlearn_in_process

NAME = "trust-world-circle"
PROJECT_OUTPUTS = ("data/prompts.json", "metrics/evaluate.json", "outputs/finetune/delta.safetensors")


def _hashes(project: Path) -> dict[str, str]:
    return {f: hashlib.sha256((project / f).read_bytes()).hexdigest() for f in PROJECT_OUTPUTS}


def _versions(project: Path) -> list[int]:
    return sorted(int(v.version) for v in client(project).search_model_versions(f"name='{NAME}'"))


def _summary(project: Path, out: str) -> dict:
    runs = sorted((project / "runs" / "reerase").iterdir())
    return json.loads((runs[-1] / "reerase.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory, root):
    dest = scratch_project(tmp_path_factory.mktemp("reerase"), root)
    unlearn_in_process(dest)
    assert _versions(dest) == [1]
    return dest


def test_production_within_the_gate_registers_nothing(project):
    before = _hashes(project)
    res = trust(project, "reerase")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "still erased" in out
    summary = _summary(project, out)
    assert summary["status"] == "still erased" and summary["checked"] == f"{NAME}/1"
    assert summary["leak_rate"] <= summary["gate"] == 1.0
    assert summary["new_version"] is None and not (Path(summary["workspace"]) / "erase").exists()
    assert _versions(project) == [1]
    assert _hashes(project) == before  # the project's own DVC outputs are never touched
    fr = latest_flow_run(project)
    assert fr["state"] == "COMPLETED"
    md = fr["artifacts"][artifact_key("reerase", NAME)]["markdown"]
    assert md.startswith("# reerase: PASSED: still erased") and f"checked: **{NAME}/1**" in md


def test_leaking_production_is_repaired_in_rounds_and_the_flow_fails_when_they_are_spent(project):
    # gate 0.0: the tiny erasure leaks, and no 4-step round can reach a leak rate of 0 on 22 prompts
    edit_params(project, {"register": {"gates": {"max_target_rate": 0.0}}, "reerase": {"max_rounds": 2}})
    before = _hashes(project)
    v1 = client(project).get_model_version(NAME, "1")
    res = trust(project, "reerase")
    out = res.stdout + res.stderr
    flat = " ".join(out.split())
    summary = _summary(project, out)
    print(json.dumps(summary, indent=1))
    assert summary["leak_rate"] > summary["gate"] == 0.0, out[-3000:]
    # both rounds ran, each evaluated; the best is registered as candidate only and the flow run is Failed
    assert [r["round"] for r in summary["rounds"]] == [1, 2], out[-3000:]
    assert all(r["leak_rate"] > 0.0 and not r["passed"] for r in summary["rounds"])
    assert res.returncode == 3, out[-3000:]
    assert "flow run Failed" in flat and "2 repair round(s) spent without passing" in flat
    fr = latest_flow_run(project)
    assert fr["state"] == "FAILED" and "2 repair round(s) spent without passing" in fr["message"]
    md = fr["artifacts"][artifact_key("reerase", NAME)]["markdown"]
    assert md.startswith("# reerase: FAILED") and "| 1 |" in md and "| 2 |" in md and "Registered v2" in md
    best = next(r for r in summary["rounds"] if r["round"] == summary["round"])
    assert f"max_target_rate {best['target_rate']:.3f} > 0.0" in flat or f"max_asr {best['leak_rate']:.3f} > 0.0" in flat
    assert summary["new_version"] == 2 and not summary["promoted"]
    c = client(project)
    assert str(c.get_model_version_by_alias(NAME, "production").version) == "1"
    assert str(c.get_model_version_by_alias(NAME, "candidate").version) == "2"
    # MLflow shows the truth: the flow's run FAILED, one `round N` run per round with its leak rate
    parent = c.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FAILED"
    rounds = c.search_runs([parent.info.experiment_id], "tags.`trust.stage` = 'reerase-round' and "
                           f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["trust.round"] for r in rounds) == ["1", "2"]
    assert all(r.data.metrics["leak_rate"] > 0.0 and r.data.tags["trust.round.result"].startswith("failed")
               for r in rounds)
    # round 2 trained on what broke through round 1 as well
    r2 = json.loads((Path(summary["workspace"]) / "round-2" / "data" / "prompts.json").read_text())
    r1 = json.loads((Path(summary["workspace"]) / "round-1" / "data" / "prompts.json").read_text())
    assert set(r1["reerase"]["forced_prompts"]) <= set(r2["reerase"]["forced_prompts"])
    assert summary["rounds"][1]["added_prompts"] >= summary["rounds"][0]["added_prompts"]

    # Lineage names the parent version: registry tag, package (hash-checked) and delta metadata.
    v2 = c.get_model_version(NAME, "2")
    assert v2.tags["lineage.parent_version"] == f"{NAME}/1"
    assert v2.tags["lineage.flow"] == "reerase"
    package = Path(v2.source)
    pipeline = json.loads((package / "pipeline.json").read_text())
    assert pipeline["parent_version"] == f"{NAME}/1"
    # ... and the delta is against the ORIGINAL base, like v1's, so `trust load` rebuilds it.
    v1_pipeline = json.loads((Path(v1.source) / "pipeline.json").read_text())
    assert pipeline["base_model"] == v1_pipeline["base_model"]
    assert pipeline["base_fingerprint"] == v1_pipeline["base_fingerprint"]
    from safetensors import safe_open

    with safe_open(str(package / "delta.safetensors"), "pt") as f:
        meta, keys2 = f.metadata(), set(f.keys())
    with safe_open(str(Path(v1.source) / "delta.safetensors"), "pt") as f:
        keys1 = set(f.keys())
    assert meta["parent_version"] == f"{NAME}/1" and meta["base_fingerprint"] == v1_pipeline["base_fingerprint"]
    assert keys1 <= keys2  # what v1 changed is still in the composed delta

    # The successful prompts were added to the forget prompts.
    added = summary["successful_prompts"]
    assert added, "the weak production model should leak on some prompt"
    sets = json.loads((package / "prompts.json").read_text())
    assert set(added) <= {r["prompt"] for r in sets["target"]["train"]}

    # `trust load` / `trust lineage` do exactly these calls (in-process here: two fewer start-ups).
    from trust.lineage import format_lineage, lineage, verify
    from trust.registry import load_registered

    parts = load_registered(f"{NAME}/2")  # original base + composed delta, fingerprint-checked
    assert parts.fingerprint() != load_registered(f"{NAME}/1").fingerprint()
    assert all(r["status"] == "ok" for r in verify(f"{NAME}/2"))
    text = format_lineage(lineage(f"{NAME}/2"))
    assert f"reerase.parent_version = {NAME}/1" in text
    assert "(reerase" in text  # registered by a stage run under the reerase flow run
    assert _hashes(project) == before
    assert not (Path(summary["workspace"]) / "model").exists()  # materialised model removed (keep_model: false)


def test_rounds_that_never_reach_their_bar_register_nothing_and_fail(project):
    # erase to a bar on, gate 0.0: the stop threshold (gate - margin) is below 0, never reached
    edit_params(project, {"register": {"gates": {"max_target_rate": 0.0}}, "reerase": {"max_rounds": 1},
                          "finetune": {"to_bar": {"enabled": True, "check_every": 2, "samples_per_prompt": 1,
                                                  "max_prompts": 1, "sample_steps": 2, "confirm_steps": None}}})
    before = _versions(project)
    res = trust(project, "reerase")
    out = res.stdout + res.stderr
    flat = " ".join(out.split())
    assert res.returncode == 3, out[-3000:]
    assert "round 1 (" in flat and "fine-tuning did not reach its bar" in flat
    assert "none of 1 repair round(s) reached its fine-tuning bar; nothing registered, production unchanged" in flat
    summary = _summary(project, out)
    assert summary["new_version"] is None and summary["rounds"][0]["leak_rate"] is None
    assert _versions(project) == before
