import shutil
import subprocess
import sys

import pytest
import yaml

from trust.config import ParamsError, load_params


def _write(tmp_path, root, mutate):
    raw = yaml.safe_load((root / "params.yaml").read_text())
    mutate(raw)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_shipped_params_are_valid(shipped_params):
    assert shipped_params.uses_world
    assert shipped_params.world.train.steps > 0


@pytest.mark.parametrize(
    "mutate, key, hint",
    [
        (lambda r: r["world"]["train"].update(stpes=3), "world.train.stpes", "unknown key"),
        (lambda r: r["world"]["train"].update(steps="many"), "world.train.steps", "integer"),
        (lambda r: r["world"]["train"].update(steps=-3), "world.train.steps", "greater than or equal to 1"),
        (lambda r: r["world"]["eval"].update(bar_canonical=1.5), "world.eval.bar_canonical", "less than or equal to 1"),
        (lambda r: r["model"].update(base="/no/such/sd-v1-5"), "model.base", "does not exist"),
        (lambda r: r["model"].update(device="tpu"), "model.device", "pattern"),
        (lambda r: r.update(finetun={}), "finetun", "unknown key"),
    ],
)
def test_bad_params_name_the_key(tmp_path, root, mutate, key, hint):
    path = _write(tmp_path, root, mutate)
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert key in str(e.value) and hint in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("model: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_cli_rejects_bad_params_before_any_work(tmp_path, root):
    """`trust world train` with a bad parameter exits 2, names it, and touches no output."""
    path = _write(tmp_path, root, lambda r: r["world"]["train"].update(lr=-1.0))
    trust = shutil.which("trust") or str(root / ".venv" / "bin" / "trust")
    res = subprocess.run([trust, "world", "train", "--params", str(path)], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2
    assert "world.train.lr" in res.stderr and "greater than 0" in res.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()
