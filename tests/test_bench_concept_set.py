"""bench/concept_set.py without training: every development concept is a valid three-line spec
with no shipped example among them, method rows change only finetune, and the table counts a
budget failure as a failure."""

from __future__ import annotations

import pytest

from trust.config import Params


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("concept_set")


def test_dev_set_is_three_kinds_none_shipped_and_split(bench, root):
    assert len(bench.DEV_SET) >= 12
    assert {k for _, k, _, _ in bench.DEV_SET} == {"single", "combination", "conditional"}
    shipped = [{"shape": "circle"}, {"shape": "circle", "colour": "red"}, {"shape": "cross", "background": "striped"}]
    assert not [d for _, _, d, _ in bench.DEV_SET if d in shipped]
    assert {s for *_, s in bench.DEV_SET} == {"tune", "report"}
    for name, kind, detect, _ in bench.DEV_SET:
        for method in bench.METHODS:
            raw = bench.concept_raw(name, kind, detect, method)
            raw["evaluate"]["attacks"]["prompt_set"] = str(root / "data" / "attacks" / "world_circle.csv")
            p = Params.model_validate(raw, context={"root": root})
            assert p.concept.detect == detect and p.concept.keep  # derived
            # every fine-tuning method erases to a bar; a closed-form edit has nothing to iterate
            assert p.finetune.to_bar.enabled == (p.finetune.method.name not in ("uce", "rece")), method


def test_table_counts_budget_failures(bench):
    ok = {"concept": "square", "kind": "single", "method": "TRUST", "bar_reached": True, "passed": True,
          "target": {"base": 1.0, "erased": 0.02, "images": 128}, "worst_keep": {"name": "shape:cross", "drop": 0.04},
          "margin_images": 3.6, "steps": 200, "finetune_s": 80.3}
    budget = {"concept": "cross", "kind": "single", "method": "TRUST", "bar_reached": False, "passed": False,
              "finetune_s": 300.2}
    md = bench.markdown({"square/TRUST": ok, "cross/TRUST": budget})
    assert "| square | single | TRUST | PASS | 1.00 -> 0.02 | shape:cross +0.04 | 3.6 | 200 | 80.3 |" in md
    assert "| cross | single | TRUST | **FAIL** (budget: bar not reached)" in md
    assert "- TRUST: 1/2 pass (50%)" in md
    whole = md.split("## whole set")[1]  # both subsets together (here only the report one has rows)
    assert "- TRUST: 1/2 pass (50%), median margin" in whole
