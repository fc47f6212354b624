"""bench/trust_speed.py's table from a hand-made result: ratios by hand, the check priced in steps."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("trust_speed")


def _row(pool, step, frozen):
    return {"target_pool": pool, "steps": 80, "setup_s": 12.0, "seconds": step * 80, "step_s": step,
            "frozen_s_per_step": frozen, "trained_fwd_s_per_step": 0.15, "backward_update_s_per_step": step - frozen - 0.15,
            "reestimate_s_per_step": 0.01, "check_s": 16.0, "check_images": 112, "check_every": 40, "check_in_steps": 32.0}


def test_table_reads_the_two_rows_and_prices_a_block_with_its_check(bench):
    r = {"concept": "circle-on-plain", "steps": 80, "pool": 320, "torch_threads": 1,
         "plain": _row(0, 0.5, 0.2), "pooled": _row(320, 0.3, 0.05)}
    md = bench.markdown(r)
    assert "| step (s) | 0.500 | 0.300 | 0.60x |" in md
    assert "|   frozen UNet forwards | 0.200 | 0.050 | 0.25x |" in md
    # a 40-step block with its 16 s check: (0.3 x 40 + 16) / (0.5 x 40 + 16) = 28 / 36
    assert "**pooled / plain step time: 0.60x**; per 40-step block with its check: 0.78x" in md
    assert "16.0 s (112 validation images" in md and "= 32.0 fresh-target steps, every 40 steps" in md
