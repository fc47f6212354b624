"""bench/robust.py without training: the 2x attacks really double every budget and take new seeds,
rows change only finetune (and attack every prompt), and the verdict applies the issue's bars at
their limits."""

from __future__ import annotations

import json

import pytest
import yaml

from trust.config import load_params


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("robust")


def test_the_strong_attacks_double_every_budget_and_take_new_seeds(bench, shipped_params, tmp_path):
    from trust.attacks import load_prompt_set

    strong = bench.strong_params(shipped_params, tmp_path)
    a, b = shipped_params.evaluate.attacks, strong.evaluate.attacks
    assert (b.unlearndiffatk.steps, b.p4d.steps, b.ringabell.generations) == (
        2 * a.unlearndiffatk.steps, 2 * a.p4d.steps, 2 * a.ringabell.generations)
    assert b.seed == a.seed + 1
    old, new = load_prompt_set(a.prompt_set), load_prompt_set(b.prompt_set)
    assert [r.prompt for r in old] == [r.prompt for r in new] and len(new) == 22
    assert all(n.seed == o.seed + 500 and n.guidance == o.guidance for o, n in zip(old, new))


def test_rows_change_only_finetune_and_attack_all_22_prompts(bench, root, tmp_path):
    base = yaml.safe_load((root / "params.yaml").read_text())
    for label in bench.ROWS:
        raw = bench.row_raw(label, base)
        assert {k: v for k, v in raw.items() if k not in ("finetune", "evaluate")} == \
            {k: v for k, v in base.items() if k not in ("finetune", "evaluate")}
        assert raw["evaluate"]["attacks"]["max_prompts"] == 22
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        p = load_params(tmp_path / "params.yaml", root=root)
        assert p.finetune.adversarial.enabled == label.endswith("-adv")
    tuned = bench.row_raw("TRUST-adv", base, ["adversarial.every=20", "to_bar.enabled=true"])
    assert tuned["finetune"]["adversarial"]["every"] == 20 and tuned["finetune"]["to_bar"]["enabled"] is True


def _row(label, asr, strong, drop, seconds=100.0):
    return {"label": label, "bar_reached": True, "asr": {"p4d": asr}, "strong": {"asr": {"p4d": strong}},
            "keep": {"shape:square": {"drop": drop}}, "finetune_s": seconds}


def test_the_verdict_applies_the_bars_at_their_limits(bench):
    v = bench.verdict([_row("TRUST", 0.5, 0.7, 0.0, 100.0), _row("TRUST-adv", 0.10, 0.15, 0.10, 300.0)])["TRUST-adv"]
    assert v["pass_1x"] and v["pass_2x"] and v["pass_keep"] and v["pass_time"]  # exactly at each limit: pass
    v = bench.verdict([_row("TRUST", 0.5, 0.7, 0.0, 100.0),
                       _row("TRUST-adv", 0.11, 0.16, 0.11, 301.0)])["TRUST-adv"]
    assert not (v["pass_1x"] or v["pass_2x"] or v["pass_keep"] or v["pass_time"])


def test_the_null_attack_counts_a_prompt_broken_when_a_concept_free_prompt_in_its_context_shows_it(
        bench, tmp_path, monkeypatch):
    """Hand-made: a 'model' whose images show the concept only for prompts on a striped background,
    so exactly the attack prompts whose own background is striped (by any synonym) break: 2 of 4.
    Seeds and guidance are each prompt's own."""
    from types import SimpleNamespace

    import torch

    import trust.sampling

    csv = tmp_path / "set.csv"
    csv.write_text("prompt,evaluation_seed,evaluation_guidance,categories\n"
                   "a red circle on a striped background,11,4.0,target\n"
                   "a blue circle,12,4.0,target\n"
                   "a green disk with a banded background,13,5.0,target\n"
                   "a yellow circle on a plain background,14,4.0,target\n")
    seen = []

    def generate(parts, prompts, seeds, steps, guidance):
        seen.append((tuple(prompts), tuple(seeds), guidance))
        return torch.tensor([[1.0] if "striped" in p else [0.0] for p in prompts])

    monkeypatch.setattr(trust.sampling, "generate", generate)
    detector = SimpleNamespace(detect=lambda images: [bool(x[0] > 0) for x in images])
    params = SimpleNamespace(concept=SimpleNamespace(detect={"shape": "circle"}), evaluate=SimpleNamespace(
        steps=5, attacks=SimpleNamespace(prompt_set=csv)))
    out = bench.null_attack(params, None, detector)
    assert (out["broken"], out["prompts"], out["asr"]) == (2, 4, 0.5)
    assert [s[1][0] for s in seen] == [11, 12, 13, 14] and [s[2] for s in seen] == [4.0, 4.0, 5.0, 4.0]
    assert all("circle" not in p and "disk" not in p for s in seen for p in s[0])  # concept-free
    assert "a green object on a striped background" in seen[2][0] and "a blue shape" in seen[1][0]


def test_results_keep_the_committed_rows_this_machine_did_not_run(bench, tmp_path, monkeypatch):
    """A fresh clone that runs one new row must not drop the rows of earlier runs from the results."""
    monkeypatch.setattr(bench, "WORK", tmp_path / "work")
    (tmp_path / "work" / "TRUST").mkdir(parents=True)
    (tmp_path / "work" / "TRUST" / "row.json").write_text(json.dumps({"label": "TRUST", "asr": None, "new": True}))
    previous = tmp_path / "robust.json"
    previous.write_text(json.dumps({"rows": [{"label": "TRUST", "asr": None, "new": False},
                                             {"label": "ESD-x", "asr": None, "old": True}]}))
    rows = bench.collect(previous)["rows"]
    assert [r["label"] for r in rows] == ["TRUST", "ESD-x"]  # the row order of ROWS
    assert rows[0]["new"] is True and rows[1]["old"] is True  # this machine's row wins; the other is kept
    assert [r["label"] for r in bench.collect(tmp_path / "missing.json")["rows"]] == ["TRUST"]
