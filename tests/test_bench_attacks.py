"""Smoke test of the attack benchmark on a tiny model built from configs (tiny budgets, one prompt; < 60 s)."""

import json

import torch

from bench.lib.attacks import (ATTACK_LABELS, AttackBenchSettings, default_runs, quick_params,
                                     run_attack_bench)
from trust.config import Params
from bench.lib.methods import BenchSettings
from trust.world.classifier import ConceptClassifier


def test_attack_bench_quick_on_a_tiny_model(world_tokenizer, tmp_path):
    from tiny_models import tiny_sd_parts

    parts = tiny_sd_parts(world_tokenizer)
    torch.manual_seed(0)
    classifier = ConceptClassifier(width=8, image_size=16).eval()
    csv = tmp_path / "attacks.csv"
    csv.write_text("prompt,evaluation_seed,evaluation_guidance,categories\n"
                   "a red circle,1,4.0,target\na crimson disk,2,4.0,synonym\n")
    params = quick_params(Params(), prompt_set=csv)
    ev = params.evaluate
    # params' max_prompts 1, the bench attacks 2: the first-1 numbers are reported from the same outcomes.
    params = params.model_copy(update={"evaluate": ev.model_copy(update={
        "attacks": ev.attacks.model_copy(update={"max_prompts": 1})})})
    settings = AttackBenchSettings(max_prompts=2, weak_candidates=(1, 2), weak_max_pre_asr=0.5,
                                   bench=BenchSettings.quick())
    runs = default_runs(settings.weak_candidates, bar_max_steps=2, salun_steps=1, trust_steps=2)
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    out = tmp_path / "results"
    result = run_attack_bench(parts, classifier, params, tmp_path, runs, settings, out, progress=False,
                              log=lambda *a: None)
    assert all(torch.equal(v, before[k]) for k, v in parts.unet.state_dict().items())  # base left unchanged

    labels = [r["label"] for r in result["runs"]]
    assert labels == ["base", "ESD-x (weak)", "TRUST-CIP", "ESD-x", "ESD-u", "SalUn", "UCE", "RECE"]
    assert [w["steps"] for w in result["weak_sweep"]] == [1, 2]
    weak = next(r for r in result["runs"] if r["weak"])
    assert weak["steps_run"] in (1, 2)
    for r in result["runs"]:
        assert set(r["attacks"]) == {"unlearndiffatk", "p4d", "ringabell"}
        assert r["prompts_full"] == 2 and r["prompts_subset"] == 2
        assert 0 <= r["pre_asr_full"] <= 1 and 0 <= r["target_rate"] <= 1
        for a in r["attacks"].values():
            # UnlearnDiffAtk's ASR: a no-attack detection counts once, so an attack can only add to it.
            assert a["asr"] >= a["pre_asr"] and a["gain"] == a["asr"] - a["pre_asr"]
            assert a["consistent_with_prompt_set"] and a["prompts"] == 2
            assert a["first_n"]["prompts"] == 1 and a["first_n"]["asr"] >= a["first_n"]["pre_asr"]
        assert r["pre_asr_subset"] == r["attacks"]["p4d"]["pre_asr"]
        assert r["total_s"] > 0
    assert result["runs"][0]["steps_run"] == 0 and result["runs"][0]["train_s"] == 0
    assert set(result["bars"]) == {"base_pre_asr", "weak_unlearndiffatk_gain", "weak_p4d_gain"}

    for name in ("attacks.json", "attacks.md", "attacks.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "attacks.json").read_text())
    assert saved["concept"] == "circle" and len(saved["runs"]) == 8
    md = (out / "attacks.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    for name in ATTACK_LABELS.values():
        assert f"{name} ASR |" in header and f"{name} ASR - pre |" in header
    for label in labels:
        assert f"| {label} |" in md
    assert "weak erasure, UnlearnDiffAtk:" in md and "weak erasure, P4D:" in md
    assert "first 1 prompts only" in md
