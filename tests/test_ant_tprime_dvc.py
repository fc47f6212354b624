"""bench/ant_tprime_dvc.py: the queued `-S` overrides and the read-back of `dvc exp show --json`
(failed experiments skipped, the latest run of a t' kept). The sweep itself runs the real
pipeline (bench/results/ant_tprime_dvc.md); tests/test_flow.py runs a queued experiment."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import ant_tprime_dvc as sweep  # noqa: E402


def _exp(name, k, target, ts, error=None, method="ant"):
    keep = {"shape:square": {"base": 1.0, "tuned": 0.9}, "shape:cross": {"base": 1.0, "tuned": 1.0}}
    return {"name": name, "revs": [{"rev": f"r{k}{ts}", "name": name, **({"error": error} if error else {}), "data": {
        "timestamp": f"2026-11-25T00:0{ts}:00",
        "params": {"params.yaml": {"data": {"finetune": {"method": {"name": method, "split_step": k}, "steps": 150,
                                                         "lr": 0.005, "preserve_weight": 30}}}},
        "metrics": {"metrics/evaluate.json": {"data": {"target_rate": target, "target_rate_base": 1.0,
                                                         "keep": keep}}}}}]}


def test_overrides_replace_by_key_and_reject_bad_items():
    out = sweep.overrides(["finetune.steps=300", "++finetune.method.eta=2"])
    assert "finetune.steps=300" in out and "finetune.steps=150" not in out and "++finetune.method.eta=2" in out
    assert out[:2] == ["~finetune.method", "+finetune.method={name:ant,scope:attn2,gamma:1e-7}"]
    try:
        sweep.overrides(["nonsense"])
    except SystemExit as e:
        assert "KEY=VALUE" in str(e)
    else:
        raise AssertionError("accepted an override without '='")


def test_collect_skips_failed_and_keeps_the_latest(monkeypatch, tmp_path):
    shown = [{"rev": "workspace", "experiments": None},
             {"rev": "abc", "experiments": [
                 _exp("tprime-30", 30, 0.5, 1), _exp("tprime-30", 30, 0.4, 3),
                 _exp("tprime-43", 43, 0.03, 2, error={"msg": "Experiment run failed"}),
                 _exp("tprime-49", 49, 0.1, 2), _exp("other", 20, 0.0, 2)]}]
    monkeypatch.setattr(sweep, "dvc", lambda project, *args, capture=False: json.dumps(shown))
    rows = sweep.collect(tmp_path)
    assert [(r["split_step"], r["target_rate"]) for r in rows] == [(30, 0.4), (49, 0.1)]
    assert abs(rows[0]["preservation"] - 0.95) < 1e-9
    md = sweep.markdown(rows, sweep.overrides([]))
    assert "| 30 | tprime-30 | 0.40 | 0.95 |" in md
    sweep.plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
