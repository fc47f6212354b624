"""The method registry: frozen weights stay frozen, CSR is a Hessian-vector product,
ConceptPrune prunes exactly what it selects, deltas and resume reproduce runs, and a short
erasure on the world works."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from pydantic import ValidationError

from trust.config import FinetuneParams, LocalizeParams, Params
from trust.delta import apply_delta, save_delta
from trust.methods.loop import build_method, train
from trust.methods.registry import METHODS, method_class
from trust.methods.ant_fusion.config import AntFusionConfig
from trust.methods.conceptprune.method import wanda_select
from trust.methods.data import ForgetData
from trust.methods.losses import csr_penalty
from trust.methods.saliency import cross_attention_params, expand_mask
from trust.methods.salun.method import global_top_mask
from trust.methods.trust.method import denoise_saliency

ROWS = [{"prompt": "a red circle", "anchor": "a plain background"},
        {"prompt": "a blue circle", "anchor": "a striped background"}]
KEEP = [{"prompt": "a red square", "anchor": None}, {"prompt": "a green cross", "anchor": None}]
CASES = {
    "trust": {"dynamic": False},
    "trust-csr": {"loss": "csr", "reestimate_every": 1},
    "esd-x": {"method": "esd", "variant": "x", "ddim_steps": 4},
    "esd-u": {"method": "esd", "variant": "u", "xt": "reference"},
    "salun": {"method": "salun", "fraction": 0.3},
    "conceptprune": {"method": "conceptprune", "ddim_steps": 10, "timesteps": 3},
    "full": {"method": "full", "preserve_weight": 1.0},
}


@pytest.fixture(scope="module")
def world_data(shipped_world):
    return (ForgetData.build(shipped_world, ROWS, references=4, seed=0),
            ForgetData.build(shipped_world, KEEP, references=4, seed=1))


def _fresh(world):
    parts = copy.copy(world)
    parts.unet = copy.deepcopy(world.unet)
    return parts


def _method(world, world_data, case: str, **extra):
    parts = _fresh(world)
    data, keep = world_data
    kw = {"batch_size": 4, "lr": 1e-3, **CASES.get(case, {}), **extra}
    ft = FinetuneParams().updated(**kw)
    loc = LocalizeParams(batch_size=4, xi=1.0)
    mask = denoise_saliency(parts.unet, parts.unet, cross_attention_params(parts.unet, loc.modules), data, parts, loc, 0, 0)
    return parts, build_method(parts, data, ft, loc, keep=keep, initial_mask=mask)


def test_registry_lists_all_methods():
    assert set(METHODS) == {"trust", "esd", "salun", "conceptprune", "full", "ant", "ant_fusion", "uce", "rece"}
    with pytest.raises(ValueError, match="finetune.method.name: unknown method 'nope'"):
        method_class("nope")
    with pytest.raises(ValidationError, match="finetune.method(.|\n)*'nope'(.|\n)*'trust', 'esd'"):
        Params.model_validate({"finetune": {"method": "nope"}})


@pytest.mark.parametrize("case", list(CASES))
def test_only_trainable_parameters_change(shipped_world, world_data, case):
    parts, method = _method(shipped_world, world_data, case)
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    trainable = set(method.params)
    # Frozen parameters have requires_grad=False (no backward work, no optimizer state).
    assert {n for n, p in parts.unet.named_parameters() if p.requires_grad} == trainable
    assert method.trainable_parameters() == sum(parts.unet.get_parameter(k).numel() for k in trainable)
    if case.startswith("esd-x"):
        assert trainable and all(".attn2." in k for k in trainable)
    if case.startswith("esd-u"):
        assert trainable and not any(".attn2." in k for k in trainable)
    if case.startswith("trust"):
        assert trainable and all(".attn2.to_" in k for k in trainable)
    for s in range(2):
        info = method.step(s)
        assert all(isinstance(v, (int, float)) for v in info.values())
    after = parts.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "a step changed nothing"
    if case == "conceptprune":
        assert changed <= {k for k in before if k.endswith("ff.net.2.weight")}
        assert method.finished
        return
    assert changed <= trainable, sorted(changed - trainable)[:3]
    if case in ("trust", "salun"):  # static masks: entries outside the mask are bit-identical too
        for k in changed:
            outside = expand_mask(method.mask[k], after[k]) == 0
            assert torch.equal(after[k][outside], before[k][outside]), k


def test_salun_mask_is_global_top_fraction(shipped_world, world_data):
    parts, method = _method(shipped_world, world_data, "salun")
    total = sum(p.numel() for p in parts.unet.parameters())
    assert abs(sum(int(m.sum()) for m in method.mask.values()) - round(0.3 * total)) <= 1
    assert set(method.params) == set(method.mask)
    m = global_top_mask({"a": torch.tensor([1.0, 5.0, 3.0]), "b": torch.tensor([[4.0, 0.0]])}, 0.4)
    assert m["a"].tolist() == [0, 1, 0] and m["b"].tolist() == [[1, 0]]


def test_wanda_selection_rule():
    st = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    sb = torch.tensor([[6.0, 1.0, 1.0, 1.0], [0.0, 0.0, 9.0, 9.0]])
    # per row: top ceil(0.5*4)=2 target scores among entries where target > base
    assert wanda_select(st, sb, 0.5).tolist() == [[False, True, True, False], [True, True, False, False]]


def test_conceptprune_zeroes_exactly_the_selected_weights(shipped_world, world_data):
    parts, method = _method(shipped_world, world_data, "conceptprune")
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    method.step(0)
    after = parts.unet.state_dict()
    assert method.mask and method.trainable_parameters() == 0
    for k, m in method.mask.items():
        sel = m.bool()
        assert 0 < int(sel.sum()) < sel.numel()
        assert torch.all(after[k][sel] == 0)
        assert torch.equal(after[k][~sel], before[k][~sel])
    for k in before:
        if k not in method.mask:
            assert torch.equal(after[k], before[k]), k
    snapshot = {k: v.clone() for k, v in after.items()}
    method.step(1)  # training-free: nothing more happens
    assert all(torch.equal(snapshot[k], v) for k, v in parts.unet.state_dict().items())


def test_csr_gradient_is_a_finite_difference_hessian_vector_product(world_tokenizer):
    from tiny_models import tiny_sd_parts

    unet = tiny_sd_parts(world_tokenizer).unet.double()
    params = cross_attention_params(unet, ["to_q", "to_k", "to_v"])
    for p in params.values():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([100, 700])
    c = torch.randn(2, 6, 32, generator=g, dtype=torch.float64)
    mask = {k: (torch.rand(p.shape[0], generator=g) < 0.5).double() for k, p in params.items()}
    names = list(params)

    with sdpa_kernel([SDPBackend.MATH]):
        reg = csr_penalty(unet(x, t, encoder_hidden_states=c).sample, params, mask)
        grad = torch.autograd.grad(reg, [params[k] for k in names])

        def sens_grad():
            eps = unet(x, t, encoder_hidden_states=c).sample
            return torch.autograd.grad((eps**2).sum(), [params[k] for k in names])

        v = [expand_mask(mask[k], params[k]) * gk for k, gk in zip(names, sens_grad())]
        h = 1e-4 / max(float(vk.abs().max()) for vk in v)
        with torch.no_grad():
            for k, vk in zip(names, v):
                params[k].add_(h * vk)
        plus = sens_grad()
        with torch.no_grad():
            for k, vk in zip(names, v):
                params[k].sub_(2 * h * vk)
        minus = sens_grad()
    # d/dtheta ||m * g||^2 = 2 H (m * g) for a 0/1 mask
    for k, gk, p_, m_ in zip(names, grad, plus, minus):
        fd = 2 * (p_ - m_) / (2 * h)
        torch.testing.assert_close(gk, fd, rtol=1e-4, atol=1e-6 * float(fd.abs().max()) + 1e-12, msg=k)


def test_delta_save_and_load_reproduces_the_tuned_model(shipped_world, world_data, tmp_path):
    parts, method = _method(shipped_world, world_data, "trust")
    base = {k: v.clone() for k, v in shipped_world.unet.state_dict().items()}
    for s in range(2):
        method.step(s)
    tuned = parts.unet.state_dict()
    summary = save_delta(base, tuned, tmp_path / "delta.safetensors",
                         {"base_fingerprint": shipped_world.fingerprint(), "method": "trust"})
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert summary["tensors"] == len(changed) and all(".attn2.to_" in k for k in changed)
    fresh = apply_delta(_fresh(shipped_world), tmp_path / "delta.safetensors")
    for k, v in fresh.unet.state_dict().items():
        assert torch.equal(v, tuned[k]), k


@pytest.mark.parametrize("case,extra", [("trust", {"dynamic": True, "reestimate_every": 2}), ("esd-x", {}),
                                        ("salun", {})])
def test_resume_matches_an_uninterrupted_run(shipped_world, world_data, case, extra):
    parts_a, a = _method(shipped_world, world_data, case, **extra)
    for s in range(4):
        a.step(s)
    parts_b, b = _method(shipped_world, world_data, case, **extra)
    for s in range(2):
        b.step(s)
    state = {k: v.clone() for k, v in b.state_tensors().items()}  # "interrupted" after step 2
    parts_c, c = _method(shipped_world, world_data, case, **extra)
    c.load_state_tensors(state)
    for s in range(2, 4):
        c.step(s)
    want = parts_a.unet.state_dict()
    for k, v in parts_c.unet.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_short_erasure_lowers_target_detection(shipped_world, shipped_classifier, shipped_params):
    from trust.concepts import build_prompt_sets
    from trust.sampling import generate
    from trust.stages.evaluate import detected

    sets = build_prompt_sets(shipped_params.concept, shipped_params.prompts)
    held_out = [r["prompt"] for r in sets["target"]["eval"]][:12]
    seeds = list(range(len(held_out)))
    detect = shipped_params.concept.detect

    def rate(parts):
        images = generate(parts, held_out, seeds, steps=10, guidance=4.0)
        return sum(detected(shipped_classifier.predict(images), detect)) / len(held_out)

    parts = _fresh(shipped_world)
    loc = shipped_params.localize
    ft = shipped_params.finetune.updated(steps=30, lr=0.05, preserve_weight=0.0, references=8)
    data = ForgetData.build(parts, sets["target"]["train"], ft.references, ft.seed)
    mask = denoise_saliency(parts.unet, parts.unet, cross_attention_params(parts.unet, loc.modules), data, parts, loc,
                            loc.seed, 0, 0)
    method = build_method(parts, data, ft, loc, initial_mask=mask)
    before = rate(parts)
    train(method, ft.steps)
    after = rate(parts)
    assert before >= 0.5 and after <= before - 0.4, (before, after)


def test_ant_fusion_refuses_summed_overlap_before_training():
    with pytest.raises(ValueError, match="fusion_overlap=sum.*use `own`"):
        FinetuneParams(method={"name": "ant_fusion", "fusion_overlap": "sum"})
    # multi-concept fusion (bench/ant_multi.py) builds the method config on its own
    assert AntFusionConfig(fusion_overlap="sum").fusion_overlap == "sum"


def test_ant_fusion_writes_only_on_finish_and_resumes_exactly(shipped_world, world_data):
    """finetune.method ant_fusion: training touches only the LoRA; finish() (the loop calls it after
    the last step) writes fused attn2 to_k/to_v weights; a resumed run fuses to the same weights."""
    from trust.methods.ant_fusion.lora import kv_weight_names

    extra = {"method": "ant_fusion", "lr": 5e-3, "ddim_steps": 10, "split_step": 7, "lora_rank": 2,
             "fusion_positions": "all"}
    parts_a, a = _method(shipped_world, world_data, "ant_fusion", **extra)
    before = {k: v.clone() for k, v in parts_a.unet.state_dict().items()}
    for s in range(4):
        a.step(s)
    assert all(torch.equal(v, before[k]) for k, v in parts_a.unet.state_dict().items())  # not yet fused
    a.finish()
    after = parts_a.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(kv_weight_names(parts_a.unet))
    parts_b, b = _method(shipped_world, world_data, "ant_fusion", **extra)
    for s in range(2):
        b.step(s)
    state = {k: v.clone() for k, v in b.state_tensors().items()}
    parts_c, c = _method(shipped_world, world_data, "ant_fusion", **extra)
    c.load_state_tensors(state)
    for s in range(2, 4):
        c.step(s)
    c.finish()
    for k, v in parts_c.unet.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_negative_guidance_target_points_away_from_the_concept():
    """ESD's target eps_u - eta (eps_c - eps_u), by hand: uncond 1, cond 3, eta 2 -> 1 - 2 * 2 = -3
    (the conditional direction reversed), and eta 0 is the unconditional prediction itself."""
    from trust.methods.losses import negative_guidance_target

    u, c = torch.full((2,), 1.0), torch.full((2,), 3.0)
    assert torch.equal(negative_guidance_target(u, c, 2.0), torch.full((2,), -3.0))
    assert torch.equal(negative_guidance_target(u, c, 0.0), u)


class _SumModel(torch.nn.Module):
    """A stand-in frozen UNet whose prediction is the sum of its condition's entries, per row."""

    def forward(self, x, t, encoder_hidden_states):
        return SimpleNamespace(sample=encoder_hidden_states.sum(dim=(1, 2))[:, None].expand(len(x), 3))


@pytest.mark.parametrize("forget_target, eta, expected", [
    ("anchor", 1.0, 2.0),                  # the anchor's prediction itself
    ("negative_guidance", 2.0, 1 - 2 * 4),  # empty 1, concept 5: away from the concept, from the empty prompt
    ("anchor_negative", 1.0, 2 - 1 * 3),    # anchor 2, concept 5: away from the concept, from the anchor
    ("anchor_negative", 0.0, 2.0),
])
def test_each_forget_target_by_hand(forget_target, eta, expected):
    """L_prev's training target for a hand-made frozen model whose prediction is its condition's sum:
    empty prompt 1, anchor 2, concept 5 (each condition one entry)."""
    from trust.methods.base import Method

    m = Method.__new__(Method)
    m.frozen = _SumModel()
    m.uncond = torch.ones(1, 1, 1)
    m.cfg = FinetuneParams().updated(method={"name": "trust", "forget_target": forget_target, "eta": eta}).method
    x, t = torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)
    out = m.forget_target(x, t, torch.full((2, 1, 1), 5.0), torch.full((2, 1, 1), 2.0))
    assert torch.equal(out, torch.full((2, 3), float(expected)))
