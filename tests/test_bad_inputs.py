"""The bad-input table: what a careless user or a tamperer hands the CLI, each case run through the
`trust` commands, checked for its exit code, a message naming the field (or file and line) and
the fix, and for nothing changed: every file under data/, outputs/, metrics/, models/ and the
registry's package folders, and the registry's versions and aliases.

The params-schema cases are in tests/test_bad_params.py (they run every command on each); the
kill -9 cases in tests/test_flow.py (`trust run`, and the localize and evaluate stages) and
tests/test_finetune_resume.py (the finetune stage). The README states the count of all three.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from project_factory import deep_update
from test_registry import GOOD, NAME, base, lineage_of, make_package  # noqa: F401 (base: a fixture)

SD_PROMPTS = {"target": ["a photo of a circle"], "anchor": "a photo"}


# -- what each case breaks ----------------------------------------------------------------
def _params_text(text: bytes):
    return lambda project: (project / "params.yaml").write_bytes(text)


def _edit(edit: dict):
    def apply(project: Path) -> None:
        raw = yaml.safe_load((project / "params.yaml").read_text())
        (project / "params.yaml").write_text(yaml.safe_dump(deep_update(copy.deepcopy(raw), edit), sort_keys=False))
    return apply


def _csv(body: bytes):
    """The attack prompt set replaced by `body` (header included)."""
    def apply(project: Path) -> None:
        (project / "data" / "attacks" / "bad.csv").write_bytes(body)
        _edit({"evaluate": {"attacks": {"prompt_set": "data/attacks/bad.csv"}}})(project)
    return apply


HEADER = b"prompt,evaluation_seed,evaluation_guidance\n"


def _model(make):
    """model.base pointed at a folder `make(folder)` builds (a Stable Diffusion user's mistakes)."""
    def apply(project: Path) -> None:
        folder = project / "sd"
        folder.mkdir()
        make(folder)
        _edit({"model": {"base": "sd"}, "concept": SD_PROMPTS, "evaluate": {"detector": {"kind": "nudenet"}}})(project)
    return apply


def _sd_layout(folder: Path, weights: str = "diffusion_pytorch_model.safetensors", components=None) -> None:
    (folder / "model_index.json").write_text("{}")
    for c in components or ("tokenizer", "text_encoder", "unet", "scheduler", "vae"):
        (folder / c).mkdir()
        if c in ("text_encoder", "unet", "vae"):
            (folder / c / weights).write_bytes(b"\0" * 16)


def _tamper(project: Path) -> None:
    from test_lineage import _tamper as tamper

    tamper(_package(project))


def _package(project: Path) -> Path:
    return next((project / "mlartifacts" / "registry" / NAME).iterdir())


# (id, break, command, exit code, what the message must say)
CASES = [
    # params.yaml as a file
    ("duplicate-section", _params_text(b"finetune:\n  lr: 0.1\nevaluate:\n  steps: 3\nfinetune:\n  steps: 3\n"),
     ["params", "check"], 2, ["finetune: given twice (lines 1 and 5)", "dropping the first whole"]),
    ("duplicate-key", _params_text(b"finetune:\n  lr: 0.1\n  lr: 0.2\n"), ["finetune"], 2,
     ["finetune.lr: given twice (lines 2 and 3)", "merge them"]),
    ("empty-file", _params_text(b""), ["params", "check"], 2, ["params.yaml: empty", "shipped params.yaml"]),
    ("comments-only-file", _params_text(b"# nothing here\n"), ["finetune"], 2, ["params.yaml: empty"]),
    ("not-utf8-params", _params_text(b"concept:\n  name: caf\xe9\n"), ["params", "check"], 2,
     ["not UTF-8", "save it as UTF-8"]),
    # numbers that are no numbers
    ("lr-inf", _edit({"finetune": {"lr": float("inf")}}), ["finetune"], 2, ["finetune.lr: must be a finite number (got inf)"]),
    ("guidance-inf", _edit({"evaluate": {"guidance": float("inf")}}), ["evaluate"], 2,
     ["evaluate.guidance: must be a finite number (got inf)"]),
    ("lr-nan", _edit({"finetune": {"lr": float("nan")}}), ["finetune"], 2, ["finetune.lr:"]),
    ("max-seconds-inf", _edit({"finetune": {"max_seconds": float("inf")}}), ["finetune"], 2,
     ["finetune.max_seconds: must be a finite number"]),
    # prompts
    ("empty-target-prompt", _edit({"concept": {"target": ["a red circle", ""]}}), ["prompts"], 2,
     ["concept.target.1: empty target prompt", "unconditional"]),
    ("blank-added-target", _edit({"concept": {"add_target": ["   "]}}), ["params", "check"], 2,
     ["concept.add_target.0: empty target prompt"]),
    # the attack prompt set (CSV)
    ("csv-header-only", _csv(HEADER), ["evaluate"], 2, ["bad.csv: no prompts (only a header)"]),
    ("csv-prompt-too-long", _csv(HEADER + b"a red circle" + b" and a red circle" * 600 + b",1,4.0\n"),
     ["params", "check"], 2, ["bad.csv line 2: prompt is", "tokens long, over the 30 the text encoder reads",
                              "shorten it"]),
    ("csv-not-utf8", _csv(HEADER + b"a red circle,1,4.0\na caf\xe9 circle,2,4.0\n"), ["evaluate"], 2,
     ["bad.csv line 3: not UTF-8", "save the file as UTF-8"]),
    ("csv-missing-column", _csv(b"prompt,evaluation_seed\na red circle,1\n"), ["params", "check"], 2,
     ["missing column(s) ['evaluation_guidance']"]),
    ("csv-bad-seed", _csv(HEADER + b"a red circle,one,4.0\n"), ["params", "check"], 2,
     ["bad.csv line 2: evaluation_seed must be an integer"]),
    ("csv-empty-prompt", _csv(HEADER + b"a red circle,1,4.0\n,2,4.0\n"), ["params", "check"], 2,
     ["bad.csv line 3: empty prompt"]),
    ("csv-guidance-inf", _csv(HEADER + b"a red circle,1,inf\n"), ["params", "check"], 2,
     ["bad.csv line 2: evaluation_guidance must be a finite number"]),
    ("csv-missing-file", _edit({"evaluate": {"attacks": {"prompt_set": "data/attacks/nope.csv"}}}), ["evaluate"], 2,
     ["evaluate.attacks.prompt_set:", "nope.csv not found"]),
    # model folders
    ("model-ckpt-only", _model(lambda f: (f / "v1-5-pruned.ckpt").write_bytes(b"\0" * 16)), ["params", "check"], 2,
     ["model.base:", "only pickle-based checkpoint(s) ['v1-5-pruned.ckpt']", "--to_safetensors"]),
    ("model-pickle-weights", _model(lambda f: _sd_layout(f, "diffusion_pytorch_model.bin")), ["localize"], 2,
     ["model.base:", "has no .safetensors weights (found pickle weights ['diffusion_pytorch_model.bin']"]),
    ("model-missing-component", _model(lambda f: _sd_layout(f, components=("tokenizer", "unet", "scheduler", "vae"))),
     ["params", "check"], 2, ["model.base:", "lacks component folder(s) text_encoder"]),
    ("model-folder-missing", _edit({"model": {"base": "/no/such/sd-v1-5"}, "concept": SD_PROMPTS}), ["params", "check"], 2,
     ["model.base: folder '/no/such/sd-v1-5' does not exist"]),
    # a device this torch cannot use (cuda:7: refused on a CPU build and on any machine with < 8 GPUs)
    ("device-not-available", _edit({"model": {"device": "cuda:7"}}), ["params", "check"], 2,
     ["model.device: 'cuda:7', but this torch", "model.device: cpu"]),
    ("device-mps-on-linux", _edit({"model": {"device": "mps"}}), ["localize"], 2, ["model.device: 'mps'"]),
    # what runs code
    ("dask-plain-tcp", _edit({"evaluate": {"distributed": True, "dask_address": "tcp://10.0.0.5:8786"}}), ["evaluate"], 2,
     ["evaluate.dask_address:", "plain TCP", "tls://", "evaluate.dask_insecure: true"]),
    ("dask-no-scheme", _edit({"evaluate": {"distributed": True, "dask_address": "10.0.0.5:8786"}}), ["params", "check"], 2,
     ["evaluate.dask_address:", "plain TCP"]),
    ("torchscript-inception", _edit({"evaluate": {"inception_weights": "data/attacks/world_circle.csv"}}), ["evaluate"], 2,
     ["evaluate.inception_weights:", "TorchScript", "evaluate.trust_torchscript: true"]),
    # registry references and packages
    ("ref-malformed", None, ["load", "trust-world-circle:production"], 2, ["is not a model reference", "NAME@ALIAS"]),
    ("ref-unknown-model", None, ["lineage", "no-such-model@production"], 2,
     ["no registered model 'no-such-model'", f"registered models: ['{NAME}']"]),
    ("ref-unknown-alias", None, ["load", f"{NAME}@staging"], 2, ["has no alias 'staging'", "production -> v1"]),
    ("ref-unknown-version", None, ["lineage", f"{NAME}/7"], 2, ["has no version 7", "its versions: [1]"]),
    ("tampered-package-lineage", _tamper, ["lineage", f"{NAME}@production"], 1,
     ["delta.safetensors (modified)", "extra.py (unexpected)", "manifest.json (rewritten)"]),
    ("tampered-package-load", _tamper, ["load", f"{NAME}@production"], 2,
     ["not what was registered: delta.safetensors (modified)", "refusing to load it"]),
    ("package-folder-deleted", lambda project: shutil.rmtree(_package(project)), ["load", f"{NAME}@production"], 2,
     ["package folder", "does not exist"]),
]


def _snapshot(project: Path) -> dict:
    files = {p.relative_to(project).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for d in ("data", "outputs", "metrics", "models", "mlartifacts")
             for p in sorted((project / d).rglob("*")) if p.is_file()}
    if not (project / "mlflow.db").exists():
        return {"files": files, "store": None}  # and none may be created
    from mlflow import MlflowClient

    versions = sorted((v.version, tuple(sorted(v.aliases or [])), v.tags.get("package_sha256"))
                      for v in MlflowClient().search_model_versions(f"name='{NAME}'"))
    return {"files": files, "versions": versions}


def _register(project: Path, base: dict) -> None:
    """One registered version in the project's own store (for the registry cases)."""
    from trust import registry, tracking
    from trust.config import Params, TrackingParams

    tracking.configure(TrackingParams(), project)
    registry.register_version(Params.model_validate({"register": {"model_name": NAME}}), project,
                              make_package(project / "pkg", base), GOOD, lineage_of(base), None)
    shutil.rmtree(project / "pkg")


@pytest.fixture
def project(tmp_path, root, monkeypatch, empty_mlflow_db):
    """The shipped params.yaml, stand-in outputs of every stage and the world's tokenizer (prompt
    lengths are checked with it)."""
    from trust import tracking

    files = {"data/prompts.json": b'{"target": {"train": [], "eval": []}}\n', "metrics/finetune.json": b'{"steps": 200}\n',
             "metrics/evaluate.json": b'{"target_rate": 0.02}\n', "outputs/finetune/delta.safetensors": b"\1" * 64,
             "outputs/evaluate/successful_prompts.json": b"[]\n"}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    shutil.copytree(root / "data" / "attacks", tmp_path / "data" / "attacks")
    shutil.copytree(root / "models" / "world" / "tokenizer", tmp_path / "models" / "world" / "tokenizer")
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    return tmp_path


@pytest.mark.parametrize("breaks, args, code, says", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_it_and_nothing_changes(project, request, breaks, args, code, says):
    if args[0] in ("load", "lineage"):
        _register(project, request.getfixturevalue("base"))
    if breaks is not None:
        breaks(project)
    before = _snapshot(project)
    from trust.cli import app

    res = CliRunner().invoke(app, args, catch_exceptions=False)
    text = " ".join(res.output.split())
    assert res.exit_code == code, f"trust {' '.join(args)}: exit {res.exit_code}\n{res.output}"
    for s in says:
        assert s in text, f"trust {' '.join(args)}: {s!r} not in\n{res.output}"
    assert "Traceback" not in res.output
    assert _snapshot(project) == before


def test_the_readme_counts_the_table(root):
    """The README states how many bad inputs the tests run; it is this table's count plus the
    schema table's and the kill -9 cases."""
    import re

    from test_bad_params import CASES as SCHEMA_CASES

    total = len(CASES) + len(SCHEMA_CASES) + len(KILL_CASES)
    m = re.search(r"(\d+) bad inputs", (root / "README.md").read_text())
    assert m and int(m[1]) == total, f"README says {m and m[1]}, the tests run {total}"


# the kill -9 cases elsewhere (each checks every output is as before and the rerun works)
KILL_CASES = [
    "tests/test_flow.py::test_kill_9_of_trust_run_ends_its_whole_tree_loses_nothing_and_the_rerun_resumes",
    "tests/test_flow.py::test_kill_9_of_a_long_stage_loses_nothing[localize]",
    "tests/test_flow.py::test_kill_9_of_a_long_stage_loses_nothing[evaluate]",
    "tests/test_finetune_resume.py::test_killed_finetune_resumes_and_matches_an_uninterrupted_run",
]


def test_kill_cases_exist(root):
    import ast

    for case in KILL_CASES:
        path, name = case.split("::")
        name = name.split("[")[0]
        tree = ast.parse((root / path).read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body), case



@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root can write anywhere: nothing is read-only to it")
def test_a_read_only_output_folder_is_one_clear_error(project):
    import os

    (project / "outputs").chmod(0o555)
    try:
        from trust.cli import app

        res = CliRunner().invoke(app, ["finetune"], catch_exceptions=False)
    finally:
        (project / "outputs").chmod(0o755)
    assert res.exit_code == 2 and "cannot write" in res.output and "outputs" in res.output
    assert "Traceback" not in res.output and os.access(project / "outputs", os.W_OK)
