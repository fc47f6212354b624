"""bench/multi_concept.py without training: the eight erased pairs cover every colour and shape twice,
the run keeps exactly the other eight, and each row's params are the shipped ones but for the concept."""

from __future__ import annotations

import pytest
import yaml

from trust.config import Params


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("multi_concept")


def test_eight_pairs_erased_and_the_other_eight_kept(bench, root):
    from collections import Counter

    assert len(bench.ERASED) == 8 and len(set(bench.ERASED)) == 8
    assert set(Counter(c for c, _ in bench.ERASED).values()) == {2} and set(Counter(s for _, s in bench.ERASED).values()) == {2}
    raw = bench.row_raw(bench.ERASED)
    raw["evaluate"]["attacks"]["prompt_set"] = str(root / "examples" / "attacks" / "world_pairs.csv")
    p = Params.model_validate(raw, context={"root": root})
    assert len(p.concepts) == 8
    # by hand: the 16 pairs less the erased ones
    everything = {(c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle", "cross")}
    assert {(k["colour"], k["shape"]) for k in p.kept} == everything - set(bench.ERASED)
    shipped = yaml.safe_load((root / "params.yaml").read_text())
    assert raw["finetune"] == shipped["finetune"] and raw["localize"] == shipped["localize"]
    fused = bench.row_raw(bench.ERASED, "fused")
    assert fused["finetune"]["multi"]["mode"] == "fused"
    one = bench.row_raw([("red", "circle")])
    assert one["concept"] == {"name": "red circle", "kind": "combination", "detect": {"shape": "circle", "colour": "red"}}
