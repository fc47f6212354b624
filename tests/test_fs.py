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


def test_a_kill_between_the_two_renames_loses_nothing(tmp_path):
    """Killed after the old output moved aside and before the new one moved in: the next staged
    write (any later run of the stage) puts the previous output back first."""
    from trust.utils.fs import staged_dir

    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "delta.safetensors").write_text("previous")
    try:
        with staged_dir(tmp_path / "out") as tmp:
            (tmp / "delta.safetensors").write_text("half")
            raise RuntimeError("this run fails too")
    except RuntimeError:
        pass
    assert (tmp_path / "out" / "delta.safetensors").read_text() == "previous"
    assert not (tmp_path / ".out.old").exists() and not (tmp_path / ".out.partial").exists()
