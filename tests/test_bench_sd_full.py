"""bench/sd_full.py (full-size SD v1.4 costs) on a tiny SD folder: the measuring path runs every row in
its own process and writes its table; the memory guard's arithmetic; the SD v1.4 config is SD's."""

import json

import pytest

from tiny_models import tiny_sd_parts
from trust.models import save_model


@pytest.fixture()
def script(bench_script):
    return bench_script("sd_full")


def test_measure_on_a_tiny_folder_writes_every_row(script, tmp_path, world_tokenizer):
    save_model(tiny_sd_parts(world_tokenizer), tmp_path / "sd")
    out = tmp_path / "out"
    assert script.main(["measure", str(tmp_path / "sd"), "--methods", "trust,full", "--steps", "2",
                        "--sample-steps", "1", "--images", "1", "--out", str(out), "--dtype", "bfloat16"]) == 0
    result = json.loads((out / "sd_full_bfloat16.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {"trust", "full", "evaluation"} and not any("error" in r for r in rows.values())
    assert 0 < rows["trust"]["trainable_parameters"] < rows["full"]["trainable_parameters"] == result["meta"]["unet_params"]
    assert all(rows[k]["peak_rss_bytes"] > 0 and len(rows[k]["step_s"]) == 2 for k in ("trust", "full"))
    assert rows["trust"]["dtype"] == "bfloat16" and rows["evaluation"]["images"] == 1
    md = (out / "sd_full_bfloat16.md").read_text()
    assert "| trust |" in md and "| full |" in md and "images/s" in md


def test_the_memory_guard_counts_the_frozen_copy_and_adams_state(script):
    # 1,000 UNet weights, 100 of them in attn2: UNet + frozen copy, then grad, 2 moments, step count (float32)
    assert script._estimate_bytes("full", 1000, 100) == 4 * (2 * 1000 + 4 * 1000)
    assert script._estimate_bytes("trust", 1000, 100) == 4 * (2 * 1000 + 4 * 100)
    skipped = [{"label": "full", "skipped": "not run: needs 19.2 GiB"}]
    assert "| full | - | - | - | - | - | not run: needs 19.2 GiB |" in script.markdown(
        skipped, {"dtype": "float32", "device": "cpu", "steps": 3, "sample_steps": 4, "unet_params": 1000,
                  "threads": 1, "machine": "cpu", "command": "x"})


def test_the_unet_config_is_sd_v1_4s(script):
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # shapes only: no 3.4 GB of weights
        unet = UNet2DConditionModel(**script.UNET)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964  # SD v1.4's UNet, as published
