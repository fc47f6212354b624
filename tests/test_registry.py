"""Model registry: gates decide `production`, references resolve, packages rebuild the tuned UNet."""

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from tiny_models import tiny_sd_parts
from trust import registry, tracking
from trust.config import GateParams, Params, TrackingParams
from trust.delta import save_delta
from trust.models import load_model, save_model

NAME = "tiny-circle"
GOOD = {"target_rate_base": 0.9, "target_rate": 0.05,
        "keep": {"square": {"base": 0.8, "tuned": 0.78, "drop": 0.02}, "cross": {"base": 0.7, "tuned": 0.68, "drop": 0.02}}}
BAD = {"target_rate_base": 0.9, "target_rate": 0.5, "keep": {"square": {"base": 0.8, "tuned": 0.79, "drop": 0.01}}}


@pytest.fixture(scope="module")
def base(tmp_path_factory, world_tokenizer):
    """A saved tiny SD base model and a delta that changes its cross-attention queries."""
    d = tmp_path_factory.mktemp("base")
    save_model(tiny_sd_parts(world_tokenizer), d / "base")
    parts = load_model(d / "base")
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    tuned = {k: v + 0.01 * torch.randn_like(v) if "attn2.to_q" in k else v.clone() for k, v in before.items()}
    fp = parts.fingerprint()
    save_delta(before, tuned, d / "delta.safetensors", {"base_fingerprint": fp, "method": "trust"})
    return {"dir": d / "base", "delta": d / "delta.safetensors", "tuned": tuned, "fingerprint": fp}


@pytest.fixture
def store(tmp_path, monkeypatch, empty_mlflow_db):
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    tracking.configure(TrackingParams(experiment="t"), tmp_path)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def params() -> Params:
    return Params.model_validate({"register": {"model_name": NAME}})


def make_package(folder: Path, base: dict, note: str = "", base_model: str | None = None) -> Path:
    """What the register stage hands over: delta, pipeline.json, model card."""
    folder.mkdir(parents=True)
    shutil.copy(base["delta"], folder / "delta.safetensors")
    (folder / "pipeline.json").write_text(json.dumps({
        "base_model": base_model or str(base["dir"]), "base_fingerprint": base["fingerprint"], "method": "trust"}))
    (folder / "model_card.md").write_text(f"# card {note}\n")
    return folder


def lineage_of(base: dict) -> dict:
    return {"base_model": str(base["dir"]), "base_fingerprint": base["fingerprint"], "git_commit": "abc",
            "method": "trust", "dvc": {"finetune": "f" * 32, "evaluate": "e" * 32}}


def test_gate_results():
    g = registry.gate_results(GOOD, GateParams())
    assert g["passed"] and g["max_target_rate"] == {"value": 0.05, "limit": 0.1, "passed": True}
    assert g["max_preservation_drop"]["value"] == pytest.approx(0.02)
    g = registry.gate_results({**GOOD, "keep": {"sq": {"base": 0.9, "tuned": 0.5, "drop": 0.4}}}, GateParams())
    assert not g["passed"] and not g["max_preservation_drop"]["passed"] and g["max_target_rate"]["passed"]
    assert registry.gate_results({"target_rate_base": 1, "target_rate": 0.0}, GateParams())["max_preservation_drop"]["value"] == 0
    assert not registry.gate_results({"target_rate": float("nan")}, GateParams())["passed"]


@pytest.mark.parametrize("gate", ["max_target_rate", "max_preservation_drop", "max_asr", "max_fid_delta"])
def test_a_value_exactly_at_its_gate_limit_passes_and_just_above_fails(gate):
    """Every gate is `value <= limit`: at the limit it passes, one part in a million above it fails.
    (0.25 and 0.125 are exact in binary, so "at" means at.)"""
    limits = GateParams(max_target_rate=0.25, max_preservation_drop=0.125, max_asr=0.25, max_fid_delta=2.0)

    def metrics(value: float) -> dict:
        m = {"target_rate_base": 0.9, "target_rate": 0.0, "keep": {"sq": {"base": 0.9, "tuned": 0.9, "drop": 0.0}},
             "asr": {"p4d": 0.0, "uda": 0.0}, "fidelity": {"fid": {"delta": 0.0}}}
        if gate == "max_target_rate":
            m["target_rate"] = value
        elif gate == "max_preservation_drop":
            m["keep"]["sq"]["drop"] = value
        elif gate == "max_asr":
            m["asr"]["uda"] = value
        else:
            m["fidelity"]["fid"]["delta"] = value
        return m

    limit = getattr(limits, gate)
    at = registry.gate_results(metrics(limit), limits)
    assert at[gate] == {**at[gate], "value": limit, "limit": limit, "passed": True} and at["passed"]
    above = registry.gate_results(metrics(limit * (1 + 1e-6)), limits)
    assert not above[gate]["passed"] and not above["passed"]
    assert registry.failed_gates(above) == [gate]


def test_a_delta_from_another_base_is_refused_at_load(store, base, tmp_path, world_tokenizer):
    """The package names a base model folder that exists but holds other weights (same layout):
    `trust load` refuses the delta, naming both fingerprints, instead of applying it to them."""
    other = tmp_path / "other-base"
    save_model(tiny_sd_parts(world_tokenizer, seed=123), other)
    assert load_model(other).fingerprint() != base["fingerprint"]
    registry.register_version(params(), store, make_package(store / "p", base, base_model=str(other)), GOOD,
                              lineage_of(base), None)
    with pytest.raises(ValueError, match=f"was made from base model {base['fingerprint']}, but the loaded base is"):
        registry.load_registered(f"{NAME}@production")


def test_asr_gate_takes_the_strongest_attack():
    with_asr = {**GOOD, "asr": {"prompt_set": 0.05, "p4d": 0.5, "ringabell": 0.0}}
    assert "max_asr" not in registry.gate_results(with_asr, GateParams())  # null: not gated
    g = registry.gate_results(with_asr, GateParams(max_asr=0.25))
    assert not g["passed"] and g["max_asr"] == {"value": 0.5, "limit": 0.25, "passed": False, "attack": "p4d"}
    assert registry.gate_results(with_asr, GateParams(max_asr=0.5))["passed"]
    with pytest.raises(ValueError, match="max_asr is set but"):
        registry.gate_results(GOOD, GateParams(max_asr=0.25))


def test_fid_gate_and_empty_keep_on_sd():
    # SD nudity: keep is [] and NudeNet decides; preservation is gated on FID against a reference set.
    sd = {"target_rate_base": 0.8, "target_rate": 0.05, "keep": {},
          "fidelity": {"fid": {"base": 20.0, "erased": 23.5, "delta": 3.5, "erased_vs_base": 4.0}}}
    g = registry.gate_results(sd, GateParams())
    # nothing measures preservation: "not measured", never a pass
    assert not g["passed"] and registry.failed_gates(g) == ["max_preservation_drop"] and "max_fid_delta" not in g
    assert g["max_preservation_drop"]["measured"] is False
    # the note, shown in the tags, lineage and model card, says what to set
    assert g["max_preservation_drop"]["note"] == (
        "not measured: no kept concepts (concept.keep is empty) and no FID gate; set register.gates.max_fid_delta "
        "with evaluate.inception_weights and evaluate.fid_reference, or add kept concepts")
    g = registry.gate_results(sd, GateParams(max_fid_delta=3.0))
    assert not g["passed"] and g["max_fid_delta"] == {"value": 3.5, "limit": 3.0, "passed": False}
    assert g["max_preservation_drop"] == {"value": 0.0, "limit": 0.1, "passed": True, "measured": False, "note":
                                          "no kept concepts (concept.keep is empty); preservation gated by max_fid_delta"}
    assert registry.gate_results(sd, GateParams(max_fid_delta=4.0))["passed"]
    not_computed = {**sd, "fidelity": {"fid": {"computed": False, "reason": "evaluate.inception_weights is not set"}}}
    with pytest.raises(ValueError, match="max_fid_delta is set but .*inception_weights is not set"):
        registry.gate_results(not_computed, GateParams(max_fid_delta=3.0))


def test_a_base_that_never_shows_the_concept_cannot_reach_production(store, base):
    """Target rate 0.00 after erasure means nothing when it was 0.00 before: the base-rate floor
    fails the version (candidate only), whatever the other gates say."""
    never = {**GOOD, "target_rate_base": 0.0, "target_rate": 0.0}
    g = registry.gate_results(never, GateParams())
    assert not g["passed"] and registry.failed_gates(g) == ["min_base_target_rate"]
    assert g["max_target_rate"]["passed"] and g["min_base_target_rate"]["note"] == (
        "the base model hardly shows the concept: nothing was there to erase "
        "(check concept.detect, the target prompts and the detector)")
    at_floor = registry.gate_results({**GOOD, "target_rate_base": 0.25}, GateParams(min_base_target_rate=0.25))
    assert at_floor["passed"]
    assert not registry.gate_results({**GOOD, "target_rate_base": float("nan")}, GateParams())["passed"]
    r = registry.register_version(params(), store, make_package(store / "p", base), never, lineage_of(base), None)
    assert r["aliases"] == ["candidate"] and r["failed_gates"] == ["min_base_target_rate"]


def test_failed_gate_leaves_production_on_previous_version(store, base):
    with tracking.stage_run("register", {"model_name": NAME}, store) as run:
        r1 = registry.register_version(params(), store, make_package(store / "p1", base, "one"), GOOD,
                                       lineage_of(base), run_id=run.run_id)
    assert r1["passed"] and r1["version"] == 1 and r1["aliases"] == ["candidate", "production"]
    assert r1["model_name"] == NAME
    src = Path(r1["source"])
    assert src.parent == (store / "mlartifacts" / "registry" / NAME).resolve() and src.name == r1["package_sha256"][:16]
    manifest = json.loads((src / "manifest.json").read_text())
    assert set(manifest) == {"delta.safetensors", "pipeline.json", "model_card.md", "MLmodel"}
    assert not (src / "delta.safetensors").stat().st_mode & 0o222

    r2 = registry.register_version(params(), store, make_package(store / "p2", base, "two"), BAD, lineage_of(base), None)
    assert not r2["passed"] and r2["aliases"] == ["candidate"] and r2["failed_gates"] == ["max_target_rate"]
    assert r2["gates"]["max_target_rate"] == {"value": 0.5, "limit": 0.1, "passed": False}
    assert r2["package_sha256"] != r1["package_sha256"]
    assert int(registry.resolve(f"{NAME}@production").version) == 1
    assert int(registry.resolve(f"{NAME}@candidate").version) == 2

    v1 = registry.resolve(f"{NAME}/1")
    assert v1.run_id == run.run_id and list(v1.aliases) == ["production"]  # candidate moved on
    assert v1.tags["lineage.base_fingerprint"] == base["fingerprint"]
    assert v1.tags["lineage.dvc.finetune"] == "f" * 32 and v1.tags["lineage.git_commit"] == "abc"
    assert v1.tags["gate.max_target_rate.passed"] == "true" and v1.tags["package_sha256"] == r1["package_sha256"]
    assert registry.resolve(f"{NAME}/2").tags["gates.passed"] == "false"

    # Same content again: the immutable copy is reused (not copied again: the same files on disk), a
    # new version still made.
    inodes = {p.name: p.stat().st_ino for p in src.iterdir()}
    r3 = registry.register_version(params(), store, make_package(store / "p3", base, "one"), GOOD, lineage_of(base), None)
    assert r3["source"] == r1["source"] and r3["version"] == 3
    assert {p.name: p.stat().st_ino for p in src.iterdir()} == inodes
    assert int(registry.resolve(f"{NAME}@production").version) == 3


def test_every_alias_move_is_recorded_on_both_versions(store, base, monkeypatch):
    """Who/what moved an alias, when, from which version: v1 takes both aliases from nothing; v2
    (failed gate) takes only candidate, from v1; v3 takes production from v1 (not from v2), under a
    Prefect flow run that is named as the actor."""
    from trust.lineage import format_lineage, lineage

    monkeypatch.delenv("TRUST_PREFECT_FLOW_RUN_ID", raising=False)
    registry.register_version(params(), store, make_package(store / "p1", base, "one"), GOOD, lineage_of(base), None)
    registry.register_version(params(), store, make_package(store / "p2", base, "two"), BAD, lineage_of(base), None)
    monkeypatch.setenv("TRUST_PREFECT_FLOW_RUN_ID", "flow-123")
    registry.register_version(params(), store, make_package(store / "p3", base, "three"), GOOD, lineage_of(base), None)
    tags = {v: registry.resolve(f"{NAME}/{v}").tags for v in (1, 2, 3)}
    assert tags[1]["trust.alias.production.set"].endswith("from no version")
    assert tags[1]["trust.alias.candidate.moved"].endswith(", to v2")
    assert tags[1]["trust.alias.production.moved"].endswith(", to v3")
    assert "prefect flow run flow-123" in tags[1]["trust.alias.production.moved"]
    assert tags[2]["trust.alias.candidate.set"].endswith("from v1") and "trust.alias.production.set" not in tags[2]
    assert "prefect flow run" not in tags[2]["trust.alias.candidate.set"]
    assert tags[3]["trust.alias.production.set"].endswith("from v1")  # v2 never held production
    assert tags[3]["trust.alias.candidate.set"].endswith("from v2")
    text = format_lineage(lineage(f"{NAME}/1"))
    assert "alias production moved" in text and "to v3" in text and "alias production set" in text


def test_resolve_errors(store, base):
    registry.register_version(params(), store, make_package(store / "p", base), GOOD, lineage_of(base), None)
    with pytest.raises(ValueError, match="NAME@ALIAS .* or NAME/VERSION"):
        registry.resolve(NAME)
    with pytest.raises(ValueError, match="no alias 'staging'.*candidate -> v1.*production -> v1"):
        registry.resolve(f"{NAME}@staging")
    with pytest.raises(ValueError, match=r"no version 7; its versions: \[1\]"):
        registry.resolve(f"{NAME}/7")
    with pytest.raises(ValueError, match=f"no registered model 'nope'.*{NAME}"):
        registry.resolve("nope@production")


def test_load_registered_reproduces_tuned_unet(store, base):
    registry.register_version(params(), store, make_package(store / "p", base), GOOD, lineage_of(base), None)
    parts = registry.load_registered(f"{NAME}@production")
    state = parts.unet.state_dict()
    assert state.keys() == base["tuned"].keys()
    assert all(torch.equal(state[k], base["tuned"][k]) for k in state)


def test_export_writes_a_diffusers_folder_that_loads_with_the_erasure_applied(store, base):
    """`trust export`: StableDiffusionPipeline.from_pretrained(folder) alone (no trust code) gives the
    tuned UNet of the fixture (its own tuned weights, not the code's), a base-identical text encoder,
    and the folder says what it is; an existing folder is never overwritten by accident."""
    from diffusers import StableDiffusionPipeline

    from trust.export import EXPORT_RECORD, export_registered

    registry.register_version(params(), store, make_package(store / "p", base, "exported"), GOOD, lineage_of(base), None)
    out = store / "export"
    rec = export_registered(f"{NAME}@production", out)
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None)
    state = pipe.unet.state_dict()
    assert state.keys() == base["tuned"].keys()
    assert all(torch.equal(state[k], base["tuned"][k]) for k in state)
    base_te = load_model(base["dir"]).text_encoder.state_dict()
    assert all(torch.equal(v, base_te[k]) for k, v in pipe.text_encoder.state_dict().items())
    record = json.loads((out / EXPORT_RECORD).read_text())
    assert record["version"] == 1 and record["base_fingerprint"] == base["fingerprint"] and record["kind"] == "stable-diffusion"
    assert record["tuned_fingerprint"] != base["fingerprint"] and "# card exported" in (out / "README.md").read_text()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # safetensors only
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_registered(f"{NAME}@production", out)
    assert export_registered(f"{NAME}@production", out, overwrite=True)["version"] == rec["version"]


def test_load_registered_loads_the_base_on_the_device_asked_for(store, base, monkeypatch):
    import trust.models

    registry.register_version(params(), store, make_package(store / "p", base), GOOD, lineage_of(base), None)
    real, asked = trust.models.load_model, []
    monkeypatch.setattr(trust.models, "load_model", lambda path, device="cpu": asked.append((Path(path), device))
                        or real(path, device="cpu"))
    registry.load_registered(f"{NAME}@production", device="cuda:3")
    assert asked == [(Path(base["dir"]), "cuda:3")]


def test_load_registered_clear_errors(store, base):
    r = registry.register_version(params(), store, make_package(store / "p1", base, base_model=str(store / "gone")),
                                  GOOD, lineage_of(base), None)
    with pytest.raises(registry.RegistryError, match="base model .*gone.* does not exist"):
        registry.load_registered(f"{NAME}/1")
    registry.register_version(params(), store, make_package(store / "p2", base), GOOD, lineage_of(base), None)
    card = Path(registry.resolve(f"{NAME}/2").source) / "model_card.md"
    card.chmod(0o644)
    card.write_text("edited")
    with pytest.raises(registry.RegistryError, match=f"{NAME}/2 \\(v2\\): .*model_card.md \\(modified\\).*; refusing to load it"):
        registry.load_registered(f"{NAME}/2")
    shutil.rmtree(r["source"])
    with pytest.raises(registry.RegistryError, match="package folder .* does not exist"):
        registry.load_registered(f"{NAME}/1")
    # a package whose pipeline.json records no base model at all
    pkg = make_package(store / "p3", base)
    (pkg / "pipeline.json").write_text(json.dumps({"base_fingerprint": base["fingerprint"], "method": "trust"}))
    registry.register_version(params(), store, pkg, GOOD, lineage_of(base), None)
    with pytest.raises(registry.RegistryError, match=f"{NAME}/3 \\(v3\\): base model None recorded in"):
        registry.load_registered(f"{NAME}/3")


def test_model_card(tmp_path, base):
    gates = registry.gate_results(BAD, GateParams())
    path = tmp_path / "model_card.md"
    registry.write_model_card(path, params(), BAD, gates, lineage_of(base), ["before_after.png"])
    text = path.read_text()
    assert "# Erasure of 'circle' with trust" in text
    assert "| target (circle) | 0.900 | 0.500 |" in text and "| kept: square | 0.800 | 0.790 | 0.010 |" in text
    assert "| max_target_rate | 0.500 | 0.1 | **FAIL** |" in text and "| max_preservation_drop | 0.010 | 0.1 | pass |" in text
    assert base["fingerprint"] in text and "DVC stage `finetune`" in text and '"lr":' in text
    assert "![before_after](before_after.png)" in text
    assert "detected by the world classifier as" in text


def test_model_card_names_the_sd_detector(tmp_path, base):
    sd = {"target_rate_base": 0.8, "target_rate": 0.05, "keep": {},
          "settings": {"detector": "nudenet", "target_detector": {"detector": "nudenet", "threshold": 0.6}}}
    registry.write_model_card(tmp_path / "card.md", params(), sd, registry.gate_results(sd, GateParams()),
                              lineage_of(base), [])
    text = (tmp_path / "card.md").read_text()
    assert "detected by nudenet (threshold 0.6)" in text
    assert "| max_preservation_drop | - (not measured: no kept concepts" in text and "| **not measured** |" in text
    assert "Overall: **failed**" in text
    assert "No attack ran" in text and "No fidelity measure was computed." in text


def test_model_card_of_an_sd_version_shows_its_attacks_fidelity_and_only_its_own_stages(tmp_path, base):
    sd = {"target_rate_base": 0.8, "target_rate": 0.05, "keep": {}, "pre_asr": 0.125,
          "asr": {"unlearndiffatk": 0.25, "p4d": 0.5}, "attack_prompts": {"prompt_set": 8, "unlearndiffatk": 4, "p4d": 4},
          "fidelity": {"fid": {"name": "FID (Inception-v3)", "computed": False,
                               "reason": "set evaluate.inception_weights and evaluate.fid_reference"}},
          "settings": {"detector": "nudenet", "target_detector": {"detector": "nudenet", "threshold": 0.6}}}
    world_params = params()
    # an SD base (not the world's model folder); unvalidated copy: the card reads only which base it is
    sd_params = world_params.model_copy(update={"model": world_params.model.model_copy(update={"base": tmp_path / "sd"})})
    assert not sd_params.builds_world and world_params.builds_world
    lineage = {**lineage_of(base), "dvc": {"world": "w" * 32, "world_classifier": "t" * 32, "finetune": "f" * 32,
                                           "evaluate": "e" * 32}}
    registry.write_model_card(tmp_path / "card.md", sd_params, sd, registry.gate_results(sd, GateParams()), lineage, [])
    text = (tmp_path / "card.md").read_text()
    assert "| none (the prompt set as written: pre-ASR) | 8 | 0.125 |" in text
    assert "| unlearndiffatk | 4 | 0.250 |" in text and "| p4d | 4 | 0.500 |" in text
    assert "- FID (Inception-v3): not computed: set evaluate.inception_weights and evaluate.fid_reference" in text
    assert "DVC stage `finetune`" in text and "DVC stage `evaluate`" in text
    assert "DVC stage `world" not in text  # the world stages are not stages of an SD run
    world = (tmp_path / "world.md")
    registry.write_model_card(world, params(), sd, registry.gate_results(sd, GateParams()), lineage, [])
    assert "DVC stage `world`" in world.read_text()  # the world's own run does list them


def test_parse_ref_forms():
    assert registry.parse_ref("m-1@Prod_2") == ("m-1", "alias", "Prod_2")  # aliases may use capitals
    assert registry.parse_ref("m/12") == ("m", "version", "12")
    for bad in ("m", "m@", "m/x", "m/1/2", "a b@prod"):
        with pytest.raises(registry.RegistryError, match="is not a model reference"):
            registry.parse_ref(bad)


def test_resolve_errors_list_what_exists(store, base):
    registry.register_version(params(), store, make_package(store / "p", base), GOOD, lineage_of(base), None)
    other = Params.model_validate({"register": {"model_name": "other-model"}})
    registry.register_version(other, store, make_package(store / "q", base, note="q"), GOOD, lineage_of(base), None)
    registry.register_version(other, store, make_package(store / "r", base, note="r"), GOOD, lineage_of(base), None)
    with pytest.raises(registry.RegistryError, match=r"has no alias 'prod'; its aliases: candidate -> v1, production -> v1$"):
        registry.resolve(f"{NAME}@prod")
    # only this model's versions (the other model has versions 1 and 2)
    with pytest.raises(registry.RegistryError, match=r"has no version 7; its versions: \[1\]$"):
        registry.resolve(f"{NAME}/7")
    mlflow.MlflowClient().delete_registered_model_alias(NAME, "candidate")
    mlflow.MlflowClient().delete_registered_model_alias(NAME, "production")
    with pytest.raises(registry.RegistryError, match=r"its aliases: none$"):
        registry.resolve(f"{NAME}@production")


def test_source_folder_reads_paths_and_file_uris_and_refuses_remote_ones():
    from types import SimpleNamespace as V

    assert registry.source_folder(V(source="/data/pkgs/a", name="m", version="1")) == Path("/data/pkgs/a")
    assert registry.source_folder(V(source="file:///data/my%20pkgs/a", name="m", version="1")) == Path("/data/my pkgs/a")
    with pytest.raises(registry.RegistryError, match="m/2: source s3://b/a is not a local folder"):
        registry.source_folder(V(source="s3://b/a", name="m", version="2"))


def test_hashes_are_sha256_of_the_bytes_and_the_package_format_is_stable(tmp_path):
    """Against hashlib by hand: a file over several read chunks, an empty file, and the package
    hash's documented format (sorted relative path, NUL, bytes, NUL; manifest left out), so a
    version registered by an earlier trust still verifies."""
    import hashlib

    big = bytes(range(256)) * (3 * 4096 + 17)  # ~3 MB: more than one 1 MiB chunk
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "big.bin").write_bytes(big)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "manifest.json").write_text("{}")
    assert registry.sha256_file(tmp_path / "sub" / "big.bin") == hashlib.sha256(big).hexdigest()
    assert registry.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
    want = hashlib.sha256(b"empty\0" + b"\0" + b"sub/big.bin\0" + big + b"\0").hexdigest()
    assert registry.package_hash(tmp_path) == want
    assert registry.file_hashes(tmp_path) == {"empty": hashlib.sha256(b"").hexdigest(),
                                              "sub/big.bin": hashlib.sha256(big).hexdigest()}


def test_store_replaces_a_leftover_partial_copy_and_makes_files_read_only(tmp_path, base):
    import stat

    pkg = make_package(tmp_path / "pkg", base)
    dest = tmp_path / "registry" / "abc"
    leftover = dest.with_name(f".{dest.name}.partial")  # what a registration killed mid-copy leaves
    leftover.mkdir(parents=True)
    (leftover / "junk.bin").write_bytes(b"x")
    registry._store(pkg, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["delta.safetensors", "manifest.json", "model_card.md",
                                                      "pipeline.json"]
    assert not leftover.exists()
    assert {stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir()} == {0o444}
    assert registry.check_files(dest) and {r["status"] for r in registry.check_files(dest)} == {"ok"}


def test_a_package_without_its_delta_or_pipeline_is_refused(store, base):
    pkg = make_package(store / "p", base)
    (pkg / "pipeline.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks pipeline.json"):
        registry.register_version(params(), store, pkg, GOOD, lineage_of(base), None)
    (pkg / "delta.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks delta.safetensors, pipeline.json"):
        registry.register_version(params(), store, pkg, GOOD, lineage_of(base), None)


def test_gate_tags_record_each_value_and_verdict(store, base):
    registry.register_version(params(), store, make_package(store / "p", base), BAD, lineage_of(base), None)
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    assert tags["gate.max_target_rate.value"] == "0.5" and tags["gate.max_target_rate.limit"] == "0.1"
    assert tags["gate.max_target_rate.passed"] == "false" and tags["gate.max_preservation_drop.passed"] == "true"
    assert tags["gates.passed"] == "false" and tags["lineage.method"] == "trust"
    # only the verdicts are lower-cased (true/false): other values keep their case
    with_asr = {**GOOD, "asr": {"UnlearnDiffAtk": 0.25, "P4D": 0.5}}
    registry.register_version(Params.model_validate({"register": {"model_name": NAME, "gates": {"max_asr": 0.3}}}), store,
                              make_package(store / "q", base, note="q"), with_asr, lineage_of(base), None)
    tags = mlflow.MlflowClient().get_model_version(NAME, "2").tags
    assert tags["gate.max_asr.attack"] == "P4D" and tags["gate.max_asr.passed"] == "false"


def test_descriptions_say_what_was_erased_and_the_verdict(store, base):
    registry.register_version(params(), store, make_package(store / "p", base), BAD, lineage_of(base), None)
    registry.register_version(params(), store, make_package(store / "q", base, note="q"), GOOD, lineage_of(base), None)
    c = mlflow.MlflowClient()
    concept = params().concept.name
    assert c.get_registered_model(NAME).description == f"trust erasure of '{concept}'"
    assert c.get_model_version(NAME, "1").description == f"erases '{concept}'; gates failed: max_target_rate"
    assert c.get_model_version(NAME, "2").description == f"erases '{concept}'; gates passed"
    two_failed = {**BAD, "keep": {"square": {"base": 0.8, "tuned": 0.1, "drop": 0.7}}}
    registry.register_version(params(), store, make_package(store / "r", base, note="r"), two_failed, lineage_of(base), None)
    assert c.get_model_version(NAME, "3").description.endswith("gates failed: max_target_rate, max_preservation_drop")
    assert " " not in c.get_model_version(NAME, "3").tags[registry.FILES_TAG]  # compact: more files fit one tag


def test_file_hashes_fill_one_tag_up_to_exactly_its_limit(store, base):
    """Per-file hashes are one tag: a package whose record is exactly MAX_TAG_CHARS long registers,
    one character more is refused."""
    from trust.registry import MAX_TAG_CHARS

    from trust.pyfunc_model import write_mlmodel

    def package(folder, extra: int):
        pkg = make_package(folder, base)
        write_mlmodel(pkg)  # what registration adds (the same bytes again): counted in the record
        length = len(json.dumps(registry.file_hashes(pkg), separators=(",", ":")))
        i = 0
        while MAX_TAG_CHARS + extra - length > 0:  # each file adds ,"NAME":"<64 hex>" = len(NAME) + 70
            room = MAX_TAG_CHARS + extra - length - 70
            name = f"f{i:03d}" + "x" * max(0, min(room - 4, 60)) if room >= 4 else None
            if name is None:  # too little room for a new file: lengthen the last one instead
                last = sorted(pkg.glob("f*"))[-1]
                last.rename(last.with_name(last.name + "y" * (MAX_TAG_CHARS + extra - length)))
            else:
                (pkg / name).write_bytes(b"%d" % i)
            i += 1
            length = len(json.dumps(registry.file_hashes(pkg), separators=(",", ":")))
        assert length == MAX_TAG_CHARS + extra
        return pkg

    registry.register_version(params(), store, package(store / "fits", 0), GOOD, lineage_of(base), None)
    with pytest.raises(registry.RegistryError, match="too many files"):
        registry.register_version(params(), store, package(store / "over", 1), GOOD, lineage_of(base), None)


def test_the_registered_version_is_a_pyfunc_model_that_generates_with_the_erasure(store, base):
    """`mlflow.pyfunc.load_model("models:/NAME@production")` generates: its images are the ones the
    fixture's own tuned UNet draws for the same prompts and seeds (not the base's), uint8 (N, H, W, 3);
    the signature says prompts in, images out; a copy of the package with a changed delta is refused."""
    import mlflow.pyfunc
    import pandas as pd

    from trust import pyfunc_model
    from trust.sampling import generate

    registry.register_version(params(), store, make_package(store / "p", base), GOOD, lineage_of(base), None)
    ref = f"models:/{NAME}@production"
    info = mlflow.models.get_model_info(ref)
    assert info.signature.inputs.input_names() == ["prompt"] and info.signature.params.to_dict()
    model = mlflow.pyfunc.load_model(ref)
    prompts = ["a red circle", "a blue square"]
    out = model.predict(pd.DataFrame({"prompt": prompts}), params={"seed": 5, "steps": 2, "guidance": 3.0})

    def drawn(state):
        parts = load_model(base["dir"])
        parts.unet.load_state_dict(state)
        x = generate(parts, prompts, [5, 6], steps=2, guidance=3.0)
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    want = drawn(base["tuned"])
    assert out.dtype == want.dtype and out.shape == want.shape and out.shape[0] == 2 and out.shape[-1] == 3
    assert (out == want).all()
    assert not (out == drawn(load_model(base["dir"]).unet.state_dict())).all()  # the delta made a difference

    copy = store / "copy"
    shutil.copytree(registry.source_folder(registry.resolve(f"{NAME}@production")), copy)
    (copy / "delta.safetensors").chmod(0o644)
    with open(copy / "delta.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(registry.RegistryError, match=r"delta.safetensors \(modified\)"):
        pyfunc_model._load_pyfunc(str(copy))


def test_the_mlmodel_file_is_the_same_when_the_same_package_is_written_again(tmp_path, base):
    """The package is content-addressed: its MLmodel must not carry a fresh uuid or time each time."""
    from trust.pyfunc_model import write_mlmodel

    import os
    import time

    a, b = make_package(tmp_path / "a", base), make_package(tmp_path / "b", base)
    os.utime(b / "delta.safetensors", (time.time() - 3600, time.time() - 3600))  # copied at another time
    assert write_mlmodel(a).read_bytes() == write_mlmodel(b).read_bytes()
    assert registry.package_hash(a) == registry.package_hash(b)


def test_each_params_section_is_one_json_tag_so_a_version_has_few_tags(store, base):
    """The register stage's lineage carries every params section; flattened they were ~100 tags of a
    version's ~125. Each section is one JSON tag that reads back to the section itself."""
    sections = {"finetune": {"lr": 0.005, "method": {"name": "trust", "beta": 1e-05}, "to_bar": {"margin": 0.05}},
                "concept": {"name": "circle", "detect": {"shape": "circle"}}}
    lineage = {**lineage_of(base), "params": sections}
    registry.register_version(params(), store, make_package(store / "p", base), GOOD, lineage, None)
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    assert json.loads(tags["lineage.params.finetune"]) == sections["finetune"]
    assert json.loads(tags["lineage.params.concept"]) == sections["concept"]
    assert not [k for k in tags if k.startswith("lineage.params.finetune.")]
    assert tags["lineage.dvc.finetune"] == "f" * 32 and tags["lineage.method"] == "trust"  # the rest as before
