"""Smoke test of bench/memory_scale.py (peak memory of TRUST vs full fine-tuning by UNet size) in --quick mode."""

import importlib
import json


def _script():
    return importlib.import_module("bench.memory_scale")  # bench/ is importable from the tests (pyproject pythonpath)


def test_memory_scale_quick(tmp_path):
    script = _script()
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    for name in ("memory_scale.json", "memory_scale.md", "memory_scale.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "memory_scale.json").read_text())
    assert result["settings"]["latent"] == 8 and result["settings"]["steps"] == 1
    rows = result["rows"]
    assert [r["width"] for r in rows] == list(script.QUICK_WIDTHS)
    for r in rows:
        trust, full = r["methods"]["trust"], r["methods"]["full"]
        assert full["trainable_parameters"] == r["unet_parameters"]
        assert 0 < trust["trainable_parameters"] < r["unet_parameters"]
        assert trust["trainable_parameters"] == r["cross_attention_parameters"]
        assert 0 < trust["masked_weights"] < trust["trainable_parameters"]
        assert full["peak_memory_bytes"] > 0 and trust["peak_memory_bytes"] > 0
        assert r["ratio_trust_full"] == trust["peak_memory_bytes"] / full["peak_memory_bytes"]
        assert len(full["step_s"]) == len(trust["step_s"]) == 1
    assert rows[0]["unet_parameters"] < rows[1]["unet_parameters"]
    md = (tmp_path / "memory_scale.md").read_text()
    assert "TRUST / full" in md and "random weights" in md and "torch threads" in md


def test_widths_must_fit_the_norm_groups():
    script = _script()
    try:
        script.sd_unet_config(40, 64)
    except ValueError as e:
        assert "norm groups" in str(e)
    else:
        raise AssertionError("width 40 accepted with 32 norm groups")
    cfg = script.sd_unet_config(320, 64)
    assert cfg["block_out_channels"] == (320, 640, 1280, 1280) and cfg["cross_attention_dim"] == 768
