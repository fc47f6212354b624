"""Smoke test of bench/generation_dask.py (serial vs Dask-distributed generation) on a tiny model:
both paths give the same images and the results file has the speed-up and the start-up."""

import importlib
import json

from tests.tiny_models import tiny_sd_parts
from trust.models import save_model


def _script():
    return importlib.import_module("bench.generation_dask")  # bench/ is importable from the tests (pyproject pythonpath)


def test_generation_dask_smoke(tmp_path, world_tokenizer, monkeypatch):
    monkeypatch.setenv("TRUST_NUM_THREADS", "1")
    save_model(tiny_sd_parts(world_tokenizer), tmp_path / "model")
    script = _script()
    # 5 images in shards of 2 (the last one short) over 2 thread workers: identical to serial.
    args = ["--model", str(tmp_path / "model"), "--images", "5", "--shard-size", "2", "--steps", "2",
            "--thread-workers", "--out", str(tmp_path / "out")]
    assert script.main(args) == 0
    result = json.loads((tmp_path / "out" / "generation_dask.json").read_text())
    assert result["identical"] is True and result["shards"] == 3 and len(result["worker_shards"]) == 3
    assert result["ratio"] == result["serial_s"] / result["distributed_s"] > 0
    assert 0 < result["startup_s"] < result["distributed_s"]
    assert result["settings"]["workers"] == 2 and result["settings"]["worker_kind"] == "threads"
    md = (tmp_path / "out" / "generation_dask.md").read_text()
    assert "Speed-up (serial / distributed)" in md and "identical (torch.equal): yes" in md


def test_prompts_cycle_and_seeds_are_fixed():
    script = _script()
    n = len(set(script.world_prompts(1000)))  # the canonical prompts
    prompts = script.world_prompts(2 * n + 1)
    assert len(prompts) == 2 * n + 1 and len(set(prompts[:n])) == n
    assert prompts[n:2 * n] == prompts[:n] and prompts[-1] == prompts[0]  # cycled
    assert script.image_seeds(0, 3) == [0, 1, 2] and script.image_seeds(2, 2) == [2_000_006, 2_000_007]
