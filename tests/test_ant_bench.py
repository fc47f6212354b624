"""ANT in the method benchmark (rows ANT, ANT+fusion) and the three-concept comparison
(fusion / sequential / joint), on a tiny model built from configs (each test < 30 s, 1 thread)."""

import copy
import dataclasses
import json

import pytest
import torch

from trust.config import FinetuneParams, Params, PromptsParams
from bench.lib.ant_multi import (DEFAULT_KEPT, DEFAULT_TARGETS, MultiSettings, build_multi_prompts, compare,
                                     concat_data, markdown, run_strategy)
from bench.lib.methods import ANT_RUNS, BenchSettings, run_bench, select_runs
from trust.methods.data import ForgetData
from trust.methods.ant_fusion.lora import ConceptLora, kv_weight_names
from trust.methods.ant_fusion.method import AntFusionMethod, train_concept_lora
from trust.concepts import labels_of
from trust.world.classifier import ConceptClassifier

# tiny budgets: ANT+fusion's LoRA knobs (what ConceptLora and the multi-concept strategies read), ANT's own
FUSION_FT = dict(method="ant_fusion", batch_size=2, ddim_steps=10, split_step=7, lora_rank=2)
TINY_KNOBS = {"ant": dict(ddim_steps=10, split_step=7, seeds=1, max_maps=3),
              "ant_fusion": dict(ddim_steps=10, split_step=7, lora_rank=2)}


def _ft(**kw) -> FinetuneParams:
    return FinetuneParams(preserve_weight=0.0).updated(**{**FUSION_FT, **kw})


@pytest.fixture(scope="module")
def tiny(world_tokenizer):
    from tiny_models import tiny_sd_parts

    return tiny_sd_parts(world_tokenizer)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return ConceptClassifier(width=8, image_size=16).eval()


def _data(parts, prompts, n=4, seed=0):
    picked = [prompts[i % len(prompts)] for i in range(n)]
    with torch.no_grad():
        emb = parts.encode_text(picked)
    g = torch.Generator().manual_seed(seed)
    return ForgetData(latents=torch.randn(n, *parts.latent_shape, generator=g), target_emb=emb, anchor_emb=emb,
                      prompts=picked)


def test_ant_rows_are_selectable_and_in_the_default_table():
    assert [r.label for r in select_runs("ANT,ant+fusion")] == ["ANT", "ANT+fusion"]
    assert select_runs(None)[-2:] == ANT_RUNS
    assert [r.method for r in ANT_RUNS] == ["ant", "ant_fusion"]
    for r in ANT_RUNS:  # knobs and overrides validate
        assert r.finetune(FinetuneParams()).method.name == r.method


def test_ant_rows_run_two_steps(tiny, classifier, tmp_path):
    params = Params()
    params = params.model_copy(update={"finetune": params.finetune.updated(batch_size=2)})
    runs = [dataclasses.replace(r, knobs={**r.knobs, **TINY_KNOBS[r.method]}) for r in ANT_RUNS]
    settings = BenchSettings.quick(steps=2)
    settings.stop_at_bar = False
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    result = run_bench(tiny, classifier, params, runs, settings, tmp_path, log=lambda *a: None, name="methods_ant")
    assert all(torch.equal(v, before[k]) for k, v in tiny.unet.state_dict().items())
    rows = {r["label"]: r for r in result["runs"]}
    assert set(rows) == {"ANT", "ANT+fusion"}
    for r in rows.values():
        assert r["steps_run"] == 2 and r["changed_parameters"] > 0 and 0 <= r["erasure_target_rate"] <= 1
    fusion = rows["ANT+fusion"]
    n_kv = sum(tiny.unet.get_parameter(k).numel() for k in kv_weight_names(tiny.unet))
    assert fusion["changed_parameters"] <= n_kv  # only the fused to_k/to_v weights change
    assert fusion["trainable_parameters"] < n_kv  # the LoRA factors
    assert fusion["sync_s"] > 0 and fusion["total_s"] >= fusion["train_s"] + fusion["sync_s"] - 1e-9
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"methods_ant.{ext}").stat().st_size > 0
    assert "| ANT+fusion |" in (tmp_path / "methods_ant.md").read_text()
    assert json.loads((tmp_path / "methods_ant.json").read_text())["runs"][0]["label"] == "ANT"


def test_fusion_method_trains_a_lora_and_writes_only_on_finish(tiny):
    from trust.config import LocalizeParams

    parts = copy.copy(tiny)
    parts.unet = copy.deepcopy(tiny.unet)
    ft = _ft(lr=1e-2)
    data = _data(parts, ["a red circle", "a circle"])
    keep = _data(parts, ["a blue square", "a green cross"], seed=1)
    m = AntFusionMethod(parts, data, ft, LocalizeParams(), keep=keep)
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    for s in range(2):
        info = m.step(s)
        assert info["t1"] >= 701 > info["t2"] and "l_keep" not in info
    assert all(torch.equal(v, before[k]) for k, v in parts.unet.state_dict().items())
    m.finish()
    after = parts.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(kv_weight_names(parts.unet))
    with pytest.raises(ValueError, match="ant_fusion"):
        AntFusionMethod(parts, data, ft, LocalizeParams(), keep=None)


def test_concept_lora_preservation_term_is_optional(tiny):
    data = _data(tiny, ["a red circle"])
    keep = _data(tiny, ["a blue square"], seed=1)
    off = ConceptLora(tiny.unet, tiny.scheduler, tiny.encode_text, data, _ft(),
                      keep=keep).terms(0)
    on = ConceptLora(tiny.unet, tiny.scheduler, tiny.encode_text, data,
                     _ft(preserve_weight=2.0), keep=keep).terms(0)
    assert "l_keep" not in off and "l_keep" in on
    torch.testing.assert_close(on["loss"], off["loss"] + 2.0 * on["l_keep"])  # same ANT batch either way


def test_multi_prompts_keep_clear_of_every_target():
    mp = build_multi_prompts(DEFAULT_TARGETS, DEFAULT_KEPT, PromptsParams())
    assert set(mp.targets) == {"circle", "yellow", "triangle on striped"}
    for t in DEFAULT_TARGETS:
        assert mp.targets[t.name]["eval"] and mp.targets[t.name]["train"]
        for p in mp.preserve_train + mp.preserve_eval:
            lab = labels_of(p)
            assert not all(lab.get(h, v) == v for h, v in t.detect.items()), (p, t.name)
    assert all(k["eval"] for k in mp.kept.values())
    assert not set(mp.preserve_train) & set(mp.preserve_eval)
    assert "a red triangle on a plain background" in mp.preserve_train + mp.preserve_eval
    assert not any("yellow" in p or "golden" in p or "lemon" in p for p in mp.preserve_train + mp.preserve_eval)


def test_strategies_differ_as_specified(tiny):
    ft = _ft(lr=1e-2, steps=2)
    datas = [_data(tiny, ["a red circle"]), _data(tiny, ["a yellow square"], seed=2)]
    names = kv_weight_names(tiny.unet)
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    # sequential = LoRA 1 against the base, merged, then LoRA 2 against that model, merged
    seq = run_strategy("sequential", tiny, datas, None, ["a blue cross"], ft)
    manual = copy.deepcopy(tiny.unet)
    for i, d in enumerate(datas):
        p = copy.copy(tiny)
        p.unet = manual
        delta = train_concept_lora(p, d, ft, i)
        with torch.no_grad():
            for k, w in delta.items():
                manual.get_parameter(k).add_(w)
    for k in names:
        torch.testing.assert_close(seq.unet.get_parameter(k), manual.get_parameter(k))
    joint = run_strategy("joint", tiny, datas, None, ["a blue cross"], ft)
    p = copy.copy(tiny)
    p.unet = copy.deepcopy(tiny.unet)
    delta = train_concept_lora(p, concat_data(datas), ft.model_copy(update={"steps": 4}), 0)
    for k in names:
        torch.testing.assert_close(joint.unet.get_parameter(k), tiny.unet.get_parameter(k) + delta[k])
    fus = run_strategy("fusion", tiny, datas, None, ["a blue cross"], ft)
    for m in (seq, joint, fus):
        changed = {k for k, v in m.unet.state_dict().items() if not torch.equal(v, before[k])}
        assert changed and changed <= set(names)
    assert all(torch.equal(v, before[k]) for k, v in tiny.unet.state_dict().items())  # base untouched
    with pytest.raises(ValueError, match="strategy"):
        run_strategy("nope", tiny, datas, None, [], ft)


def test_compare_runs_three_strategies_on_a_tiny_case(tiny, classifier):
    ft = _ft(lr=1e-2, steps=1)
    res = compare(tiny, classifier, ft, PromptsParams(), settings=MultiSettings(images=1, sample_steps=2, references=2),
                  progress=False, log=lambda *a: None)
    assert set(res["strategies"]) == {"fusion", "sequential", "joint"}
    for r in res["strategies"].values():
        assert set(r["targets"]) == {"circle", "yellow", "triangle on striped"}
        assert set(r["kept"]) == {k.name for k in DEFAULT_KEPT}
        assert all(0 <= v <= 1 for v in [*r["targets"].values(), *r["kept"].values()])
    md = markdown(res)
    assert "| fusion |" in md and "| base |" in md and "fusion vs sequential" in md


def test_sweep_helpers(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "bench"))
    from ant_sweep import parse_overrides, plot_tprime

    assert parse_overrides("gamma=1e-7 lr=0.005 scope=attn2 steps=300; builder=ant_fusion") == [
        {"gamma": 1e-7, "lr": 0.005, "scope": "attn2", "steps": 300}, {"builder": "ant_fusion"}]
    res = {"steps": 2, "base": {"preservation": 1.0},
           "runs": [{"split_step": k, "target_rate": r, "preservation": 1 - r / 2} for k, r in [(30, 0.5), (43, 0.1)]]}
    plot_tprime(res, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0


def test_fusion_positions(tiny):
    from trust.methods.ant_fusion.lora import token_embeddings

    L = tiny.tokenizer.model_max_length
    real = token_embeddings(tiny, ["a red circle", "a circle"])
    every = token_embeddings(tiny, ["a red circle", "a circle"], "all")
    assert every.shape == (2 * L, real.shape[1]) and real.shape[0] < every.shape[0]
    torch.testing.assert_close(every[:5], real[:5])  # BOS a red circle EOS: the first prompt's real tokens
    with pytest.raises(ValueError, match="positions"):
        token_embeddings(tiny, ["a circle"], "some")
    assert FinetuneParams(method="ant_fusion").method.fusion_positions == "tokens"


def test_fusion_variants_share_their_loras(tiny):
    ft = _ft(lr=1e-2, steps=1)
    datas = [_data(tiny, ["a red circle"]), _data(tiny, ["a yellow square"], seed=2)]
    cache = {}
    a = run_strategy("fusion:tokens", tiny, datas, None, ["a blue cross"], ft, cache=cache)
    deltas = cache["fusion_deltas"]
    b = run_strategy("fusion:all", tiny, datas, None, ["a blue cross"], ft, cache=cache)
    assert cache["fusion_deltas"] is deltas
    c = run_strategy("fusion", tiny, datas, None, ["a blue cross"], ft)  # default positions: tokens
    names = kv_weight_names(tiny.unet)
    assert all(torch.equal(a.unet.get_parameter(k), c.unet.get_parameter(k)) for k in names)  # seeded LoRAs
    assert not all(torch.equal(a.unet.get_parameter(k), b.unet.get_parameter(k)) for k in names)


def test_fusion_beta_variant_and_per_concept_settings(tiny):
    from bench.lib.ant_multi import parse_strategy

    assert parse_strategy("fusion:all@0.3") == ("fusion", {"fusion_positions": "all", "fusion_beta": 0.3})
    assert parse_strategy("joint") == ("joint", {})
    assert parse_strategy("fusion+sum") == ("fusion", {"fusion_overlap": "sum"})
    for bad in ("joint@0.3", "fusion@x", "nope"):
        with pytest.raises(ValueError, match="strategy"):
            parse_strategy(bad)
    with pytest.raises(ValueError, match="fusion_positions"):  # validated like params.yaml
        run_strategy("fusion:some", tiny, [], None, [], FinetuneParams())
    ft = _ft(lr=1e-2, steps=1)
    datas = [_data(tiny, ["a red circle"]), _data(tiny, ["a yellow square"], seed=2)]
    names = kv_weight_names(tiny.unet)
    cache = {}
    one = run_strategy("fusion:tokens", tiny, datas, None, ["a blue cross"], ft, cache=cache)
    low = run_strategy("fusion:tokens@0.01", tiny, datas, None, ["a blue cross"], ft, cache=cache)
    assert not all(torch.equal(one.unet.get_parameter(k), low.unet.get_parameter(k)) for k in names)
    # +sum: the same as own when no prompt shows another concept, different when one does
    alone = run_strategy("fusion:tokens+sum", tiny, datas, None, ["a blue cross"], ft, cache=cache, shows=lambda q: set())
    assert all(torch.equal(one.unet.get_parameter(k), alone.unet.get_parameter(k)) for k in names)
    both = run_strategy("fusion:tokens+sum", tiny, datas, None, ["a blue cross"], ft, cache=cache,
                        shows=lambda q: {0, 1} if "red circle" in q else set())
    assert not all(torch.equal(one.unet.get_parameter(k), both.unet.get_parameter(k)) for k in names)
    with pytest.raises(ValueError, match="fusion_overlap"):
        run_strategy("fusion+sum", tiny, datas, None, ["a blue cross"], ft, cache=cache)
    # concept 1's LoRA with its own split step: its delta is what training it alone with that step gives
    per = [{}, {"split_step": 3}]
    own = {}
    run_strategy("fusion", tiny, datas, None, ["a blue cross"], ft, cache=own, per_concept=per)
    alone = train_concept_lora(tiny, datas[1], ft.updated(split_step=3), 1)
    shared = train_concept_lora(tiny, datas[1], ft, 1)
    for k in names:
        torch.testing.assert_close(own["fusion_deltas"][1][k], alone[k])
        torch.testing.assert_close(own["fusion_deltas"][0][k], cache["fusion_deltas"][0][k])
    assert not all(torch.equal(own["fusion_deltas"][1][k], shared[k]) for k in names)
