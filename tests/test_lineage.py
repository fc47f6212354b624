"""Lineage: a version traces back to its runs and base model; tampered packages are caught."""

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from test_registry import GOOD, NAME, base, lineage_of, make_package, params, store  # noqa: F401 (fixtures)
from trust import registry, tracking
from trust.cli import app
from trust.lineage import format_lineage, lineage, verify


def register_in_flow(store, base) -> tuple[dict, str]:
    """A flow parent with a finetune stage run and the register stage run that made the version."""
    with tracking.flow_run("unlearn", params(), store) as parent:
        with tracking.stage_run("finetune", {"lr": 0.003}, store, base_fingerprint=base["fingerprint"]):
            pass
        with tracking.stage_run("register", {"model_name": NAME}, store) as run:
            result = registry.register_version(params(), store, make_package(store / "pkg", base), GOOD,
                                               lineage_of(base), run_id=run.run_id)
    return result, parent.info.run_id


def test_lineage_chain(store, base):
    result, parent_id = register_in_flow(store, base)
    d = lineage(f"{NAME}@production")
    assert d["version"]["name"] == NAME and d["version"]["version"] == 1
    assert d["version"]["aliases"] == ["candidate", "production"] and d["version"]["source"] == result["source"]
    assert d["run"]["stage"] == "register" and d["parent_run"]["run_id"] == parent_id
    assert [s["stage"] for s in d["stage_runs"]] == ["finetune", "register"]
    assert all(s["git_commit"] == "unknown" for s in d["stage_runs"])
    assert d["params"] == {"model_name": NAME}
    assert d["base_fingerprint"] == base["fingerprint"] and d["base_model"] == str(base["dir"])
    assert set(d["files"]) == {"delta.safetensors", "pipeline.json", "model_card.md", "MLmodel"}
    assert all(len(h) == 64 for h in d["files"].values())
    text = format_lineage(d)
    assert f"model {NAME} version 1" in text and base["fingerprint"] in text and "stage finetune" in text
    assert MlflowClient().get_run(parent_id).info.status == "FINISHED"


def test_lineage_rows_are_the_runs_the_tracking_store_holds(store, base):
    """Each row of the lineage is what MLflow itself reports for that run (ids, names, status,
    stage, recorded DVC stage hash), and its times are the real ones (UTC, within the test)."""
    from datetime import datetime, timedelta, timezone

    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    with tracking.flow_run("unlearn", params(), store) as parent:
        with tracking.stage_run("finetune", {"lr": 0.003}, store, base_fingerprint=base["fingerprint"]) as ft:
            MlflowClient().set_tag(ft.run_id, "dvc.stage_hash", "abc123")
        with tracking.stage_run("register", {"model_name": NAME}, store) as run:
            registry.register_version(params(), store, make_package(store / "pkg", base), GOOD, lineage_of(base),
                                      run_id=run.run_id)
    t1 = datetime.now(timezone.utc) + timedelta(seconds=1)
    d = lineage(f"{NAME}/1")
    client = MlflowClient()
    for row, run_id in zip(d["stage_runs"], (ft.run_id, run.run_id)):
        real = client.get_run(run_id)
        assert (row["run_id"], row["name"], row["status"]) == (run_id, real.info.run_name, "FINISHED")
        assert t0 <= datetime.fromisoformat(row["start"]) <= t1
    # the hash is the one the version recorded from dvc.lock at registration (after the stage ran), the
    # run's own tag is what dvc.lock held when it started; the register stage's own entry is not known yet
    assert d["stage_runs"][0]["dvc_stage_hash"] == "f" * 32 and d["stage_runs"][0]["dvc_stage_hash_at_start"] == "abc123"
    assert d["stage_runs"][1]["dvc_stage_hash"] is None
    assert d["run"] == d["stage_runs"][1]
    p = client.get_run(parent.info.run_id)
    assert d["parent_run"] == {"run_id": p.info.run_id, "name": p.info.run_name, "status": "FINISHED",
                               "prefect_flow_run_id": None}
    created = datetime.fromisoformat(d["version"]["created"])
    assert t0 <= created <= t1 and created.tzinfo is not None
    assert d["method"] == lineage_of(base)["method"]


def test_verify_detects_modified_and_missing(store, base):
    result, _ = register_in_flow(store, base)
    assert {r["status"] for r in verify(f"{NAME}/1")} == {"ok"}
    folder = registry.source_folder(registry.resolve(f"{NAME}/1"))
    (folder / "delta.safetensors").chmod(0o644)
    with open(folder / "delta.safetensors", "ab") as f:
        f.write(b"\0")
    (folder / "pipeline.json").unlink()
    rows = {r["path"]: r for r in verify(f"{NAME}/1")}
    assert rows["delta.safetensors"]["status"] == "modified"
    assert rows["delta.safetensors"]["actual"] != rows["delta.safetensors"]["expected"]
    assert rows["pipeline.json"]["status"] == "missing" and rows["pipeline.json"]["actual"] is None
    assert rows["model_card.md"]["status"] == "ok"


def test_cli_lineage_exit_codes(store, base, monkeypatch):
    register_in_flow(store, base)
    monkeypatch.chdir(store)
    (store / "params.yaml").write_text("tracking:\n  experiment: t\n")
    runner = CliRunner()

    ok = runner.invoke(app, ["lineage", f"{NAME}@production"])
    assert ok.exit_code == 0, ok.output
    assert "all 4 package files match" in ok.output and base["fingerprint"] in ok.output

    card = registry.source_folder(registry.resolve(f"{NAME}@production")) / "model_card.md"
    card.chmod(0o644)
    card.write_text("# a better-looking card\n")
    bad = runner.invoke(app, ["lineage", f"{NAME}@production"])
    assert bad.exit_code == 1 and "model_card.md (modified)" in bad.output

    wrong = runner.invoke(app, ["lineage", f"{NAME}@staging"])
    assert wrong.exit_code == 2 and "no alias 'staging'" in wrong.output


def test_cli_load_generates_a_grid(store, base, monkeypatch):
    registry.register_version(params(), store, make_package(store / "pkg", base), GOOD, lineage_of(base), None)
    monkeypatch.chdir(store)
    (store / "params.yaml").write_text("evaluate:\n  steps: 2\n")
    out = CliRunner().invoke(app, ["load", f"{NAME}@production", "--prompt", "a red circle", "--out", "g.png"])
    assert out.exit_code == 0, out.output
    assert (store / "g.png").is_file() and "tuned fingerprint sha256:" in out.output
    # without --out the grid goes under the project's outputs/, not into the working folder
    out = CliRunner().invoke(app, ["load", f"{NAME}@production", "--prompt", "a red circle"])
    assert out.exit_code == 0, out.output
    assert (store / "outputs" / "load" / f"{NAME}_production.png").is_file()
    assert sorted(p.name for p in store.glob("*.png")) == ["g.png"]
    assert CliRunner().invoke(app, ["load", "not a ref"]).exit_code == 2


def _tamper(folder, rewrite_manifest: bool = True) -> None:
    """What an attacker with write access does: change the delta's bytes, add a file, and
    rewrite manifest.json to match, so the folder agrees with itself."""
    import json

    from safetensors.torch import load_file, save_file

    delta = folder / "delta.safetensors"
    delta.chmod(0o644)
    tensors = load_file(delta)
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, delta)
    (folder / "extra.py").write_text("print('hi')\n")
    if rewrite_manifest:
        (folder / "manifest.json").chmod(0o644)
        (folder / "manifest.json").write_text(json.dumps(registry.file_hashes(folder)))


def test_tampered_package_with_rewritten_manifest_is_refused_everywhere(store, base, monkeypatch):
    """The package's own manifest agrees with the tampered files; the hashes the registry
    recorded at registration do not, so lineage, load and the re-erasure all refuse it."""
    from trust.reerase.production import resolve_production

    register_in_flow(store, base)
    ref = f"{NAME}@production"
    folder = registry.source_folder(registry.resolve(ref))
    _tamper(folder)
    assert {r["status"] for r in registry.check_files(folder)} == {"ok"}  # the manifest alone is fooled
    rows = {r["path"]: r["status"] for r in verify(ref)}
    assert rows == {"delta.safetensors": "modified", "pipeline.json": "ok", "model_card.md": "ok", "MLmodel": "ok",
                    "extra.py": "unexpected", "manifest.json": "rewritten", "(package)": "modified"}
    for use in (lambda: registry.load_registered(ref), lambda: resolve_production(ref)):
        with pytest.raises(registry.RegistryError, match=r"not what was registered: delta.safetensors \(modified\)"):
            use()
    monkeypatch.chdir(store)
    (store / "params.yaml").write_text("tracking:\n  experiment: t\n")
    res = CliRunner().invoke(app, ["lineage", ref])
    assert res.exit_code == 1 and "delta.safetensors (modified)" in res.output and "extra.py (unexpected)" in res.output
    res = CliRunner().invoke(app, ["load", ref])
    assert res.exit_code == 2 and "refusing to load it" in res.output


def test_registering_again_repairs_a_tampered_content_addressed_copy(store, base):
    """The same package registered again reuses its content-addressed folder only if that folder
    still hashes to the package: a tampered copy (manifest rewritten to match) is replaced."""
    register_in_flow(store, base)
    folder = registry.source_folder(registry.resolve(f"{NAME}/1"))
    _tamper(folder)
    registry.register_version(params(), store, make_package(store / "pkg2", base), GOOD, lineage_of(base), None)
    assert {r["status"] for r in verify(f"{NAME}/2")} == {"ok"}
    assert {r["status"] for r in verify(f"{NAME}/1")} == {"ok"}  # same bytes, same folder: repaired for both


def test_registering_again_restores_a_deleted_manifest(store, base):
    """A content-addressed copy whose manifest was deleted (its files intact, so its package hash
    still matches) is re-stored too, not reused without a manifest."""
    register_in_flow(store, base)
    folder = registry.source_folder(registry.resolve(f"{NAME}/1"))
    (folder / registry.MANIFEST).unlink()
    registry.register_version(params(), store, make_package(store / "pkg2", base), GOOD, lineage_of(base), None)
    assert (folder / registry.MANIFEST).is_file()
    assert {r["status"] for r in registry.check_files(folder)} == {"ok"}


def test_lineage_of_a_version_without_a_run_and_of_one_whose_run_is_gone(store, base, monkeypatch):
    from mlflow.exceptions import MlflowException

    registry.register_version(params(), store, make_package(store / "pkg0", base), GOOD, lineage_of(base), None)
    d = lineage(f"{NAME}/1")
    assert (d["run"], d["parent_run"], d["stage_runs"], d["params"]) == (None, None, [], {})
    # the version's tags are the registry's own record, whole
    assert d["version"]["tags"] == MlflowClient().get_model_version(NAME, "1").tags and d["version"]["tags"]

    result, _ = register_in_flow(store, base)
    run_id = MlflowClient().get_model_version(NAME, str(result["version"])).run_id

    def gone(self, rid):
        raise MlflowException(f"Run '{rid}' not found")  # what a pruned store (`mlflow gc`) answers

    monkeypatch.setattr(MlflowClient, "get_run", gone)
    d = lineage(f"{NAME}/{result['version']}")
    assert d["run"] == {"run_id": run_id, "error": "run not found in the tracking store"}
    assert (d["parent_run"], d["stage_runs"], d["params"]) == (None, [], {})


def test_lineage_when_the_flow_run_is_gone_and_from_prefect(store, base, monkeypatch):
    from mlflow.exceptions import MlflowException

    from trust.lineage import _when

    assert _when(None) is None and _when(1_700_000_000_000) == "2023-11-14T22:13:20+00:00"
    result, parent_id = register_in_flow(store, base)
    MlflowClient().set_tag(parent_id, "prefect.flow_run_id", "f-123")
    assert lineage(f"{NAME}/1")["parent_run"]["prefect_flow_run_id"] == "f-123"
    real = MlflowClient.get_run

    def parent_gone(self, rid):
        if rid == parent_id:
            raise MlflowException(f"Run '{rid}' not found")
        return real(self, rid)

    monkeypatch.setattr(MlflowClient, "get_run", parent_gone)
    d = lineage(f"{NAME}/1")
    assert d["parent_run"] == {"run_id": parent_id, "error": "parent run not found"}
    assert [s["stage"] for s in d["stage_runs"]] == ["finetune", "register"]  # the siblings still found by tag


def test_a_deleted_manifest_and_a_version_registered_before_file_hashes_were_tagged(store, base):
    register_in_flow(store, base)
    folder = registry.source_folder(registry.resolve(f"{NAME}/1"))
    manifest = folder / registry.MANIFEST
    kept = manifest.read_bytes()
    manifest.unlink()
    rows = {r["path"]: r["status"] for r in verify(f"{NAME}/1")}
    assert rows == {"delta.safetensors": "ok", "pipeline.json": "ok", "model_card.md": "ok", "MLmodel": "ok",
                    "manifest.json": "missing"}
    assert verify(f"{NAME}/1")[-1] == {"path": "manifest.json", "expected": None, "actual": None, "status": "missing"}
    for r in verify(f"{NAME}/1")[:-1]:  # each file row carries the hash found on disk and the registered one
        assert r["actual"] == r["expected"] == registry.sha256_file(folder / r["path"])
    manifest.write_text("not json")  # unreadable: rewritten, with the hash of what is there now
    assert verify(f"{NAME}/1")[-1] == {"path": "manifest.json", "expected": None,
                                       "actual": registry.sha256_file(manifest), "status": "rewritten"}
    manifest.write_bytes(kept)
    # an older version: no per-file tag, so its files are checked against its manifest, its whole
    # package against the package hash tag
    registered = lineage(f"{NAME}/1")["files"]
    # the lineage lists the files the registry recorded, not what a rewritten manifest says
    manifest.chmod(0o644)
    manifest.write_text("{}")
    assert lineage(f"{NAME}/1")["files"] == registered and len(registered) == 4
    manifest.write_bytes(kept)
    MlflowClient().delete_model_version_tag(NAME, "1", registry.FILES_TAG)
    assert {r["status"] for r in verify(f"{NAME}/1")} == {"ok"}
    assert lineage(f"{NAME}/1")["files"] == registered  # no tag: the manifest's record
    _tamper(folder, rewrite_manifest=False)
    rows = {r["path"]: r["status"] for r in verify(f"{NAME}/1")}
    assert rows["delta.safetensors"] == "modified" and rows["(package)"] == "modified"
    manifest.unlink()
    assert lineage(f"{NAME}/1")["files"] == {}  # neither a tag nor a manifest: nothing recorded
    # a version with no package hash tag at all says so, with the hash the package has now
    manifest.write_bytes(kept)
    MlflowClient().delete_model_version_tag(NAME, "1", registry.HASH_TAG)
    rows = registry.check_version(registry.resolve(f"{NAME}/1"))
    assert rows[-1] == {"path": "(package)", "expected": None, "actual": registry.package_hash(folder),
                        "status": "unrecorded (the version has no package_sha256 tag)"}


def test_base_and_method_come_from_the_package_spec_and_else_from_the_registry_tags(store, base):
    """The package's pipeline.json names the base model (as an absolute path, what `trust load` opens);
    the registration's lineage tags hold what the stage was given. A package that lost its spec
    (deleted after registration: verify reports it) still shows the registered record."""
    tags = {**lineage_of(base), "base_model": "models/as-written", "base_fingerprint": "sha256:as-tagged", "method": "esd-x"}
    registry.register_version(params(), store, make_package(store / "pkg", base, base_model="/abs/base"), GOOD,
                              tags, None)
    d = lineage(f"{NAME}/1")
    assert (d["base_model"], d["base_fingerprint"], d["method"]) == ("/abs/base", base["fingerprint"], "trust")
    spec = registry.source_folder(registry.resolve(f"{NAME}/1")) / registry.PIPELINE
    spec.chmod(0o644)
    spec.unlink()
    d = lineage(f"{NAME}/1")
    assert (d["base_model"], d["base_fingerprint"], d["method"]) == ("models/as-written", "sha256:as-tagged", "esd-x")
    spec.write_text('{"base_model": "", "method": "ant"}')  # an empty value: the tag's
    d = lineage(f"{NAME}/1")
    assert (d["base_model"], d["method"]) == ("models/as-written", "ant")


def test_lineage_prints_gates_scores_and_the_dirty_flag(store, base):
    """What an auditor needs on one screen: each gate's value against its limit (a failed one says
    FAILED), the evaluate run's scores (target rate, ASR per attack), and which stage ran on a
    working tree with uncommitted changes."""
    bad = {**GOOD, "target_rate": 0.3}
    with tracking.flow_run("unlearn", params(), store):
        with tracking.stage_run("evaluate", {"seed": 0}, store) as ev:
            ev.log_metrics({"target_rate": 0.3, "asr.p4d": 0.25, "unrelated": 7.0})
            MlflowClient().set_tag(ev.run_id, "git.dirty", "true")
        with tracking.stage_run("register", {"model_name": NAME}, store) as run:
            MlflowClient().set_tag(run.run_id, "git.dirty", "false")
            registry.register_version(params(), store, make_package(store / "pkg", base), bad, lineage_of(base),
                                      run_id=run.run_id)
    d = lineage(f"{NAME}/1")
    assert d["gates"]["max_target_rate"] == {"value": "0.3", "limit": "0.1", "passed": "false"}
    evaluate = d["stage_runs"][0]
    assert evaluate["scores"] == {"asr.p4d": 0.25, "target_rate": 0.3} and evaluate["git_dirty"] == "true"
    text = format_lineage(d)
    assert "max_target_rate: 0.3 (limit 0.1) FAILED" in text
    assert "target_rate 0.3" in text and "asr.p4d 0.25" in text and "unrelated" not in text
    lines = text.splitlines()
    assert any(ln.strip().startswith("stage evaluate") and ln.endswith("(dirty)") for ln in lines)
    assert not any(ln.strip().startswith("stage register") and ln.endswith("(dirty)") for ln in lines)
