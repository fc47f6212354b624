import pytest

from trust.utils.fs import staged_dir


def test_failed_write_leaves_previous_output_intact(tmp_path):
    out = tmp_path / "model"
    with staged_dir(out) as d:
        (d / "w.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with staged_dir(out) as d:
            (d / "w.txt").write_text("half of v2")
            raise RuntimeError("crash mid-write")
    assert (out / "w.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_successful_write_replaces_output(tmp_path):
    out = tmp_path / "model"
    with staged_dir(out) as d:
        (d / "a").write_text("1")
    with staged_dir(out) as d:
        (d / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
