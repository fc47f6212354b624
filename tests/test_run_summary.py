"""The run summary (terminal panel, flow log, Prefect artifact) on hand-made run outputs: it names
the failed gate with its value and limit, shows the registry's aliases of *now*, and never shows a
previous run's registration as the result of a run that failed before registering."""

import json
from pathlib import Path

import pytest

from trust.report import run_summary as rs

EVALUATE = {
    "target_rate": 0.125, "target_rate_base": 0.97,
    "keep": {"shape:square": {"base": 1.0, "tuned": 0.9, "drop": 0.1, "images": 40}},
    "asr": {"prompt_set": 0.05, "p4d": 0.5, "ringabell": 0.0},
    "attack_prompts": {"prompt_set": 22, "p4d": 4, "ringabell": 4},
}


def _registration(passed: bool) -> dict:
    gates = {"max_target_rate": {"value": 0.125 if not passed else 0.0, "limit": 0.1, "passed": passed},
             "max_preservation_drop": {"value": 0.1, "limit": 0.1, "passed": True}, "passed": passed}
    return {"model_name": "m", "version": 7, "aliases": ["candidate", "production"] if passed else ["candidate"],
            "passed": passed, "failed_gates": [] if passed else ["max_target_rate"], "gates": gates}


def _outputs(root: Path, passed: bool) -> Path:
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "evaluate.json").write_text(json.dumps(EVALUATE))
    (root / "outputs" / "register").mkdir(parents=True)
    (root / "outputs" / "register" / "registration.json").write_text(json.dumps(_registration(passed)))
    return root


def test_a_failed_gate_is_the_verdict_with_its_value_and_limit(tmp_path):
    s = rs.unlearn_summary(_outputs(tmp_path, passed=False), failed_stage="register", error="gate failed",
                           aliases_of=lambda name, version: ["candidate"], gate_failed=True)
    assert s["verdict"] == rs.FAILED
    assert rs.headline(s).startswith("FAILED: gate(s) max_target_rate 0.125 > 0.1")
    md = rs.markdown(s)
    assert "| max_target_rate | 0.125 | 0.1 | **FAIL** |" in md
    assert "| max_preservation_drop | 0.100 | 0.1 | pass |" in md  # exactly at its limit passes
    assert "| p4d | 0.50 | 4 |" in md and "prompt_set" not in md.split("| attack |")[1]
    lines = rs.terminal_lines(s)
    assert any("p4d 0.50 (4 prompts)" in ln for ln in lines)


def test_aliases_are_the_registrys_current_ones_not_those_recorded_at_registration(tmp_path):
    # registration.json says v7 had production; since then another version took it
    s = rs.unlearn_summary(_outputs(tmp_path, passed=True), aliases_of=lambda name, version: ["candidate"])
    assert s["verdict"] == rs.PASSED and s["aliases"] == ["candidate"]
    assert "aliases candidate" in rs.headline(s) and "production" not in rs.headline(s)

    def unreadable(name, version):
        raise ConnectionError("no store")

    s = rs.unlearn_summary(tmp_path, aliases_of=unreadable)
    assert s["aliases"] == ["candidate", "production"] and "registry unreadable: no store" in s["aliases_source"]
    assert "registry unreadable" in rs.markdown(s)


@pytest.mark.parametrize("stage", ["world", "finetune", "evaluate"])
def test_a_run_failed_before_registering_does_not_show_the_previous_registration(tmp_path, stage):
    s = rs.unlearn_summary(_outputs(tmp_path, passed=True), failed_stage=stage, error="boom",
                           aliases_of=lambda name, version: ["production"])
    assert s["verdict"] == rs.FAILED and s["registration"] is None
    assert rs.headline(s) == f"FAILED in stage {stage}: nothing registered by this run"
    assert s["evaluate"] is None  # evaluate did not run in this flow run: its old metrics are not shown
    md = rs.markdown(s)
    assert "boom" in md and "v7" not in md


def test_no_registration_yet_is_incomplete_not_passed(tmp_path):
    s = rs.unlearn_summary(tmp_path, aliases_of=lambda name, version: [])
    assert s["verdict"] == rs.INCOMPLETE and rs.headline(s).startswith("INCOMPLETE")


def test_min_base_rate_gate_reads_as_below_its_floor(tmp_path):
    _outputs(tmp_path, passed=False)
    reg = _registration(False)
    reg["gates"]["min_base_target_rate"] = {"value": 0.02, "limit": 0.25, "passed": False}
    reg["failed_gates"] = ["min_base_target_rate"]
    (tmp_path / "outputs" / "register" / "registration.json").write_text(json.dumps(reg))
    s = rs.unlearn_summary(tmp_path, failed_stage="register", aliases_of=lambda name, version: ["candidate"],
                           gate_failed=True)
    assert "min_base_target_rate 0.020 < 0.25" in rs.headline(s)


def test_a_register_stage_that_crashed_does_not_show_the_previous_registration(tmp_path):
    """Only a gate failure (exit 3) writes registration.json before failing; a crash leaves the old one."""
    s = rs.unlearn_summary(_outputs(tmp_path, passed=True), failed_stage="register", error="Traceback ...",
                           aliases_of=lambda name, version: ["production"], gate_failed=False)
    assert s["verdict"] == rs.FAILED and s["registration"] is None
    assert rs.headline(s) == "FAILED in stage register: nothing registered by this run"


def test_several_concepts_get_a_target_line_each(tmp_path):
    ev = {**EVALUATE, "targets": {"red circle": {"base": 0.97, "tuned": 0.0}, "blue square": {"base": 1.0,
                                                                                               "tuned": 0.125}}}
    root = _outputs(tmp_path, passed=False)
    (root / "metrics" / "evaluate.json").write_text(json.dumps(ev))
    s = rs.unlearn_summary(root, failed_stage="register", error="gate failed",
                           aliases_of=lambda name, version: ["candidate"], gate_failed=True)
    md, lines = rs.markdown(s), rs.terminal_lines(s)
    assert "- target rate (red circle): base 0.97 -> erased **0.00**" in md
    assert "- target rate (blue square): base 1.00 -> erased **0.12**" in md
    assert "target rate (blue square): base 1.00 -> erased 0.12" in lines
    one = rs.markdown(rs.unlearn_summary(_outputs(tmp_path / "one", passed=True), aliases_of=lambda n, v: []))
    assert "- target rate: base 0.97 -> erased **0.12**" in one


def test_registry_aliases_read_from_a_real_sqlite_store_match_mlflow(tmp_path):
    """The no-op panel reads a local sqlite registry directly (no MLflow import): on a store MLflow
    itself wrote, with an alias moved between versions, it gives each version's own aliases, as MLflow's
    client does, and a store of another layout is read by MLflow's client instead."""
    import sqlite3

    from mlflow import MlflowClient

    from trust.tracking_store import sqlite_aliases, sqlite_file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    (tmp_path / "pkg").mkdir()
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path / "pkg"))
    client.set_registered_model_alias("m", "production", "1")
    client.set_registered_model_alias("m", "old", "1")
    client.set_registered_model_alias("m", "candidate", "2")
    client.set_registered_model_alias("m", "production", "2")  # moved: v1 keeps only "old"

    assert sqlite_file(uri) == tmp_path / "mlflow.db"
    assert sqlite_aliases(tmp_path / "mlflow.db", "m", 1) == ["old"]
    assert sqlite_aliases(tmp_path / "mlflow.db", "m", "2") == ["candidate", "production"]
    for v in ("1", "2"):
        assert rs.registry_aliases("m", v, uri) == sorted(client.get_model_version("m", v).aliases)

    other = tmp_path / "other.db"
    sqlite3.connect(other).close()  # a file without MLflow's alias table
    with pytest.raises(sqlite3.Error):
        sqlite_aliases(other, "m", 1)
    with pytest.raises(sqlite3.Error):
        sqlite_aliases(tmp_path / "missing.db", "m", 1)
    assert sqlite_file("http://127.0.0.1:5000") is None and sqlite_file("sqlite:///") is None


def test_report_package_does_not_import_torch():
    """`trust.report.run_summary` (the no-op `trust run` panel) leaves torch unimported; the HTML writer's
    names still load from `trust.report`."""
    import subprocess
    import sys

    code = ("import sys; from trust.report import run_summary; assert 'torch' not in sys.modules, 'torch imported'; "
            "from trust.report import write_report, Example; print(write_report.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "trust.report.html"
