"""Bad params.yaml edits through the CLI: exit 2, the message names the key, nothing is touched.

Validation happens before any model is loaded, so every case takes milliseconds (typer's
CliRunner, in-process); one case also goes through the real `trust` executable.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from project_factory import deep_update

CASES = [
    # (id, edit (deep-merged into params.yaml, or a callable on the raw dict), key named, hint)
    ("unknown-key", {"finetune": {"stpes": 3}}, "finetune.stpes", "unknown key"),
    ("unknown-section", {"finetun": {"steps": 3}}, "finetun", "unknown key"),
    ("wrong-type", {"finetune": {"lr": "fast"}}, "finetune.lr", "valid number"),
    ("wrong-type-int", {"evaluate": {"samples_per_prompt": "four"}}, "evaluate.samples_per_prompt", "valid integer"),
    ("negative-threshold", {"localize": {"xi": -1.0}}, "localize.xi", "greater than or equal to 0"),
    ("zero-steps", {"finetune": {"steps": 0}}, "finetune.steps", "greater than or equal to 1"),
    ("empty-concept-list", {"concept": {"target": []}}, "concept.target", "at least 1 item"),
    ("empty-detect", {"concept": {"detect": {}}}, "concept.detect", "at least 1 item"),
    ("missing-model-folder", {"model": {"base": "/no/such/sd-v1-5"}}, "model.base", "does not exist"),
    ("bad-enum", {"finetune": {"method": "magic"}}, "finetune.method", "does not match any of the expected tags"),
    # an old flat method key names its new place in the method's own section
    ("moved-key", {"finetune": {"loss": "csr"}}, "finetune", "finetune.loss moved to finetune.method.loss"),
    ("moved-prefixed-key", {"finetune": {"method": "esd", "esd_variant": "u"}}, "finetune",
     "finetune.esd_variant moved to finetune.method.variant (method esd)"),
    ("unknown-method-knob", {"finetune": {"method": {"name": "esd", "loss": "cip"}}}, "finetune.method.esd.loss",
     "unknown key"),
    ("bad-enum-in-list", {"localize": {"modules": ["to_q", "to_out"]}}, "localize.modules.1", "Input should be"),
    ("bad-device", {"model": {"device": "tpu"}}, "model.device", "pattern"),
    ("gate-above-1", {"register": {"gates": {"max_target_rate": 1.5}}}, "register.gates.max_target_rate",
     "less than or equal to 1"),
    ("gate-negative", {"register": {"gates": {"max_preservation_drop": -0.1}}},
     "register.gates.max_preservation_drop", "greater than or equal to 0"),
    ("bad-model-name", {"register": {"model_name": "my model!"}}, "register.model_name", "pattern"),
    ("eval-fraction-1", {"prompts": {"eval_fraction": 1.0}}, "prompts.eval_fraction", "less than 1"),
    ("guidance-below-1", {"evaluate": {"guidance": 0.5}}, "evaluate.guidance", "greater than or equal to 1"),
    ("empty-experiment", {"tracking": {"experiment": ""}}, "tracking.experiment", "at least 1 character"),
    ("section-not-mapping", {"finetune": [1, 2]}, "finetune", "valid dictionary"),
    ("reerase-cap-zero", {"reerase": {"max_added_prompts": 0}}, "reerase.max_added_prompts",
     "greater than or equal to 1"),
    ("reerase-no-rounds", {"reerase": {"max_rounds": 0}}, "reerase.max_rounds", "greater than or equal to 1"),
    ("adversarial-ant", {"finetune": {"method": "ant", "adversarial": {"enabled": True}}}, "finetune",
     "finetune.adversarial.enabled: method ant does not train on a forget batch"),
    ("adversarial-share-0", {"finetune": {"adversarial": {"share": 0}}}, "finetune.adversarial.share",
     "greater than 0"),
    ("clip-path-moved", {"localize": {"clip_path": "models/clip"}}, "localize",
     "localize.clip_path moved to model.clip_dir"),
    ("clip-dir-moved", {"evaluate": {"detector": {"clip_dir": "models/clip"}}}, "evaluate.detector",
     "evaluate.detector.clip_dir moved to model.clip_dir"),
    ("clip-scorer-without-folder", {"localize": {"scorer": "clip"}}, "model.clip_dir",
     "localize.scorer: clip needs a local CLIP folder"),
    # the concept spec (issue 13): each mistake a new user made, refused before any model loads
    ("detect-label-typo", {"concept": {"detect": {"colour": "yelow"}}}, "concept.detect.colour",
     "unknown colour 'yelow'; the world's colours are red, green, blue, yellow (did you mean 'yellow'?)"),
    ("detect-head-typo", {"concept": {"detect": {"color": "red"}}}, "concept.detect",
     "unknown head 'color'; the world classifier's heads are shape, colour, background (did you mean 'colour'?)"),
    ("keep-label-typo", {"concept": {"keep": [{"shape": "sqaure"}]}}, "concept.keep[0].shape", "did you mean 'square'?"),
    ("keep-not-shown", {"concept": {"preserve": ["a {colour} square"], "keep": [{"shape": "square"}, {"shape": "cross"}]}},
     "concept.keep[1]", "{shape: cross}: no preservation prompt shows it"),
    ("preserve-expands-to-target", {"concept": {"kind": "combination", "detect": {"shape": "circle", "colour": "red"},
                                                "preserve": ["a {colour} circle"]}},
     "concept.preserve[0]", "gives 'a red circle', which is the target"),
    ("preserve-leaves-target-open", {"concept": {"kind": "combination", "detect": {"shape": "circle", "colour": "red"},
                                                 "add_preserve": ["a circle on a {background} background"]}},
     "concept.add_preserve[0]", "leaves colour open, so it can show the target"),
    ("target-lacks-detect-label", {"concept": {"kind": "combination", "detect": {"shape": "circle", "colour": "red"},
                                               "target": ["a red circle", "a {colour} circle"]}},
     "concept.target[1]", "gives 'a green circle', which does not show colour: red (it names green)"),
    ("anchor-shows-target", {"concept": {"anchor": "a {colour} circle on a {background} background"}},
     "concept.anchor", "which shows the target {shape: circle}"),
    ("unknown-word", {"concept": {"target": ["a coloured circle"]}}, "concept.target[0]",
     "'coloured' is not a word of the world's vocabulary"),
    ("kind-single-two-labels", {"concept": {"detect": {"shape": "circle", "colour": "red"}}}, "concept.kind",
     "single, but concept.detect {shape: circle, colour: red} has 2 labels"),
    ("conditional-without-context", {"concept": {"kind": "conditional", "detect": {"shape": "circle", "colour": "red"}}},
     "concept.kind", "add a background label"),
    ("keep-is-target", {"concept": {"keep": [{"shape": "circle"}]}}, "concept.keep[0]", "it is the target itself"),
    ("unknown-slot", {"concept": {"target": ["a {texture} circle"]}}, "concept.target[0]", "unknown slot(s) ['texture']"),
    ("attack-csv-missing", {"evaluate": {"attacks": {"prompt_set": "data/attacks/world_cirlce.csv"}}},
     "evaluate.attacks.prompt_set", "world_cirlce.csv not found"),
    ("nudenet-class-typo", {"evaluate": {"detector": {"nudenet_classes": ["FEMALE_BREAST_EXPOSD"]}}},
     "evaluate.detector.nudenet_classes", "(did you mean 'FEMALE_BREAST_EXPOSED'?)"),
    ("val-eval-leave-no-train", {"prompts": {"val_fraction": 0.5, "eval_fraction": 0.45}}, "prompts",
     "leaves under 10% of the prompts for training"),
]
# Every command validates params.yaml first; the stage commands would otherwise load models.
COMMANDS = [["params", "check"], ["finetune"]]
EXTRA_COMMANDS = [["prompts"], ["evaluate"], ["register"], ["run", "--only", "finetune"], ["reerase"],
                  ["schedule", "--cron", "0 3 * * 1"], ["world", "eval"]]


def _snapshot(project: Path) -> dict[str, str]:
    return {p.relative_to(project).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(project.rglob("*")) if p.is_file() and p.name != "params.yaml"}


@pytest.fixture(scope="module")
def shipped(root) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


@pytest.fixture
def project(tmp_path, shipped, root) -> Path:
    """params.yaml plus existing outputs of every stage (stand-ins: validation must not read them)."""
    files = {
        "data/prompts.json": b'{"target": {"train": [], "eval": []}}\n',
        "metrics/finetune.json": b'{"steps": 200}\n',
        "metrics/evaluate.json": b'{"target_rate": 0.02}\n',
        "outputs/finetune/delta.safetensors": os.urandom(256),
        "outputs/evaluate/successful_prompts.json": b"[]\n",
        "outputs/register/registration.json": b'{"version": 1}\n',
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    # the files params.yaml names are checked too: the shipped prompt set is there
    shutil.copytree(root / "data" / "attacks", tmp_path / "data" / "attacks")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
    return tmp_path


def _break(project: Path, shipped: dict, edit: dict) -> None:
    import copy

    (project / "params.yaml").write_text(yaml.safe_dump(deep_update(copy.deepcopy(shipped), edit), sort_keys=False))


@pytest.fixture(scope="module")
def cli():
    from trust.cli import app

    runner = CliRunner()
    return lambda args: runner.invoke(app, args, catch_exceptions=False)


@pytest.mark.parametrize("edit, key, hint", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_param_exits_2_naming_the_key_and_touches_nothing(project, shipped, cli, monkeypatch, edit, key, hint):
    monkeypatch.chdir(project)
    before = _snapshot(project)
    _break(project, shipped, edit)
    for args in COMMANDS:
        res = cli(args)
        text = " ".join(res.output.split())
        assert res.exit_code == 2, f"trust {' '.join(args)}: exit {res.exit_code}\n{res.output}"
        assert f"{key}:" in text and hint in text, f"trust {' '.join(args)}:\n{res.output}"
        assert "nothing was run" in text
    assert _snapshot(project) == before  # no output rewritten, none added (no mlflow.db, no .partial folders)


def test_every_command_validates_before_work(project, shipped, cli, monkeypatch):
    monkeypatch.chdir(project)
    before = _snapshot(project)
    _break(project, shipped, {"finetune": {"lr": -1.0}})
    for args in EXTRA_COMMANDS:
        res = cli(args)
        assert res.exit_code == 2 and "finetune.lr" in res.output, f"trust {' '.join(args)}:\n{res.output}"
    assert _snapshot(project) == before


def test_real_executable_exits_2(project, shipped):
    """The same through the installed `trust` script: exit status and stderr as a shell sees them."""
    before = _snapshot(project)
    _break(project, shipped, {"register": {"gates": {"max_target_rate": 2}}})
    res = subprocess.run([str(Path(sys.executable).parent / "trust"), "finetune"], cwd=project, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "TRUST_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "register.gates.max_target_rate" in res.stderr and "less than or equal to 1" in res.stderr
    assert res.stdout == ""
    assert _snapshot(project) == before


def test_run_with_another_params_file_is_refused_before_work(project, shipped, cli, monkeypatch):
    """`trust run -p other.yaml`: the DVC stages would read params.yaml, so the run is refused (exit 2)
    rather than logging one file and running another; a valid file, so only this rule can refuse it."""
    monkeypatch.chdir(project)
    (project / "params.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
    (project / "other.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
    before = _snapshot(project)
    for args in (["run", "-p", "other.yaml"], ["run", "-p", "other.yaml", "--only", "evaluate"]):
        res = cli(args)
        text = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert "--params other.yaml" in text and "read ./params.yaml" in text and "nothing was run" in text
    assert _snapshot(project) == before
