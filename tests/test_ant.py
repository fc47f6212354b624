"""ANT: the timestep convention and range of each loss term, the intersected saliency mask,
masked updates that lower L_erase, and the closed-form multi-concept LoRA fusion (tiny models)."""

import copy
import functools

import pytest
import torch
from diffusers import DDPMScheduler

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.loop import build_method
from trust.methods.registry import METHODS, method_class
from trust.methods.ant import saliency as ant_saliency
from trust.methods.ant.method import draw_timesteps, split_timestep
from trust.methods.ant.saliency import intersect_masks, plot_mask_history
from trust.methods.data import ForgetData
from trust.methods.ant_fusion.lora import fuse_closed_form, kv_weight_names, token_embeddings
from trust.methods.ant_fusion.method import ant_multi_concept, train_concept_lora
from trust.utils.seeding import torch_generator

PROMPTS = ["a red circle", "a blue circle", "a circle"]
BASE_FT = dict(method="ant", batch_size=2, lr=3e-3, ddim_steps=10, split_step=7, seeds=2,
               max_maps=6, gamma=1e-5)


@pytest.fixture(scope="module")
def tiny(world_tokenizer):
    from tiny_models import tiny_sd_parts

    return tiny_sd_parts(world_tokenizer)


def _data(parts, prompts=PROMPTS, n=6, seed=0):
    picked = [prompts[i % len(prompts)] for i in range(n)]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = parts.encode_text(picked)
    return ForgetData(latents=torch.randn(n, *parts.latent_shape, generator=g), target_emb=emb,
                      anchor_emb=emb, prompts=picked)


def _method(tiny, **kw):
    parts = copy.copy(tiny)
    parts.unet = copy.deepcopy(tiny.unet)
    ft = FinetuneParams(preserve_weight=0.0).updated(**{**BASE_FT, **kw})
    return parts, build_method(parts, _data(parts), ft, LocalizeParams())


def test_registered():
    assert method_class("ant").name == "ant" and "ant" in METHODS


def test_split_step_index_to_training_timestep():
    # SD / world layout: 1000 training steps, leading spacing, steps_offset 1
    s = DDPMScheduler(num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    assert split_timestep(s, 43, 50) == 861  # paper nudity: k=43 of 50 in diffusion time -> 20k+1
    assert split_timestep(s, 7, 10) == 701
    assert split_timestep(s, 1, 50) == 21
    with pytest.raises(ValueError, match="split_step"):
        split_timestep(s, 50, 50)
    g = torch_generator(0)
    draws = [draw_timesteps(g, 861, 1000) for _ in range(400)]
    t1s, t2s = [a for a, _ in draws], [b for _, b in draws]
    assert min(t1s) >= 861 and max(t1s) <= 999 and max(t1s) > 980  # early: high noise
    assert min(t2s) >= 0 and max(t2s) <= 860 and min(t2s) < 50 and max(t2s) > 800


class Spy(torch.nn.Module):
    """Wraps a UNet; records every batch row it sees: (t, unconditional?, output row)."""

    def __init__(self, unet, uncond):
        super().__init__()
        self.unet, self.uncond, self.rows = unet, uncond, []

    def forward(self, x, t, encoder_hidden_states):
        out = self.unet(x, t, encoder_hidden_states=encoder_hidden_states)
        for i in range(x.shape[0]):
            is_u = torch.equal(encoder_hidden_states[i], self.uncond[0])
            self.rows.append((int(t[i]), is_u, out.sample[i].detach()))
        return out


def test_each_term_uses_its_timestep_range(tiny):
    parts, m = _method(tiny, eta=0.7)
    t_split = split_timestep(parts.scheduler, 7, 10)
    assert m._t_split == t_split == 701
    model, frozen = Spy(parts.unet, m.uncond), Spy(m.frozen, m.uncond)
    parts.unet, m.frozen = model, frozen
    for step in range(3):
        model.rows.clear(), frozen.rows.clear()
        with torch.no_grad():
            terms = m.terms(*m.batch(step))

        def rows(spy, early, uncond):
            r = [o for t, u, o in spy.rows if (t >= t_split) == early and u == uncond]
            ts = {t for t, u, _ in spy.rows if (t >= t_split) == early and u == uncond}
            assert len(r) == 2 and len(ts) == 1, (early, uncond, ts)  # batch 2, one t per range
            return torch.stack(r)

        ts = {t for t, _, _ in model.rows}
        assert len(ts) == 2 and sum(t >= t_split for t in ts) == 1  # one t1 (early), one t2 (late)
        eta = 0.7
        f1c, f1u = rows(frozen, True, False), rows(frozen, True, True)
        f2c, f2u = rows(frozen, False, False), rows(frozen, False, True)
        want = {
            "l_preserve": ((rows(model, True, False) - (f1u + eta * (f1c - f1u))) ** 2).mean(),
            "l_erase": ((rows(model, False, False) - (f2u - eta * (f2c - f2u))) ** 2).mean(),
            "l_uncond_early": ((rows(model, True, True) - f1u) ** 2).mean(),
            "l_uncond_late": ((rows(model, False, True) - f2u) ** 2).mean(),
        }
        for k, v in want.items():
            torch.testing.assert_close(terms[k], v, msg=k)
        total = want["l_preserve"] + 1.0 * want["l_erase"] + 0.5 * want["l_uncond_early"] + 0.5 * want["l_uncond_late"]
        torch.testing.assert_close(terms["loss"], total)


def test_mask_is_the_intersection_of_its_maps(tiny, monkeypatch):
    maps = []
    real = ant_saliency.threshold_map

    def record(grads, gamma):
        maps.append(real(grads, gamma))
        return maps[-1]

    monkeypatch.setattr(ant_saliency, "threshold_map", record)
    parts, m = _method(tiny)
    assert len(maps) == 6 == len(m.mask_history)  # 3 prompts x 2 seeds
    for n in range(1, len(maps) + 1):
        inter = functools.reduce(lambda a, b: {k: a[k] & b[k] for k in a}, maps[:n])
        assert m.mask_history[n - 1] == sum(int(v.sum()) for v in inter.values())
    assert m.mask_history == sorted(m.mask_history, reverse=True)
    assert 0 < m.mask_history[-1] < m.mask_history[0]
    full = intersect_masks(maps)
    assert set(m.mask) == {k for k, v in full.items() if v.any()} == set(m.params)
    for k, v in m.mask.items():
        assert torch.equal(v.bool(), full[k])
    a = {"w": torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)}
    b = {"w": torch.tensor([[1, 1], [0, 1]], dtype=torch.bool)}
    assert intersect_masks([a, b])["w"].tolist() == [[True, False], [False, True]]


def test_plot_mask_history(tmp_path):
    assert plot_mask_history([100, 60, 50, 48, 48], tmp_path / "h.png").stat().st_size > 0


def test_ant_lowers_erase_loss_and_touches_only_masked_weights(tiny):
    parts, m = _method(tiny, lr=3e-5)  # the random tiny UNet needs a small step
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    assert {n for n, p in parts.unet.named_parameters() if p.requires_grad} == set(m.params) == set(m.mask)
    probe = [m.batch(10_000 + i, 6) for i in range(4)]

    def l_erase():
        with torch.no_grad():
            return sum(float(m.terms(*b)["l_erase"]) for b in probe)

    e0 = l_erase()
    for s in range(15):
        info = m.step(s)
        assert all(isinstance(v, (int, float)) for v in info.values())
        assert info["t1"] >= 701 > info["t2"]
    e1 = l_erase()
    assert e1 < 0.8 * e0, (e0, e1)
    after = parts.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(m.mask)
    for k in changed:
        outside = m.mask[k] == 0
        assert torch.equal(after[k][outside], before[k][outside]), k


def test_resume_matches_an_uninterrupted_run(tiny):
    pa, a = _method(tiny)
    for s in range(4):
        a.step(s)
    _, b = _method(tiny)
    for s in range(2):
        b.step(s)
    state = {k: v.clone() for k, v in b.state_tensors().items()}
    pc, c = _method(tiny)
    c.load_state_tensors(state)
    assert c.mask_history == a.mask_history
    for s in range(2, 4):
        c.step(s)
    want = pa.unet.state_dict()
    for k, v in pc.unet.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_fusion_equals_least_squares_solve():
    g = torch.Generator().manual_seed(0)
    out, D = 5, 4
    W = torch.randn(out, D, generator=g, dtype=torch.float64)
    deltas = [{"w": torch.randn(out, D, generator=g, dtype=torch.float64)} for _ in range(2)]
    embs = [torch.randn(3, D, generator=g, dtype=torch.float64), torch.randn(2, D, generator=g, dtype=torch.float64)]
    pres = torch.randn(4, D, generator=g, dtype=torch.float64)
    for beta, ridge in [(0.5, 0.0), (2.0, 1e-3)]:
        got = fuse_closed_form({"w": W}, deltas, embs, pres, beta, ridge)["w"]
        A0 = sum(e.T @ e for e in embs) + beta * pres.T @ pres
        lam = ridge * float(A0.diagonal().mean())
        # stacked system: rows e_j^T W*^T = e_j^T (W + dW_i)^T, sqrt(beta) e_k^T W*^T = sqrt(beta) e_k^T W^T,
        # sqrt(lam) I W*^T = sqrt(lam) W^T
        lhs = torch.cat([*embs, beta**0.5 * pres, lam**0.5 * torch.eye(D, dtype=torch.float64)])
        rhs = torch.cat([*(e @ (W + d["w"]).T for e, d in zip(embs, deltas)), beta**0.5 * pres @ W.T,
                         lam**0.5 * W.T])
        want = torch.linalg.lstsq(lhs, rhs).solution.T
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    base = {"w": W.float(), "v": torch.randn(3, D, generator=g)}
    same = fuse_closed_form(base, [], [], pres.float(), 1.0, 1e-6)
    assert all(torch.equal(same[k], base[k]) for k in base)


def test_fusion_with_summed_edits_equals_least_squares_solve():
    """fusion_overlap sum: an embedding set whose prompts show concepts 0 and 1 has the target
    (W + dW_0 + dW_1) e; the others keep their own edit."""
    g = torch.Generator().manual_seed(1)
    out, D = 5, 6
    W = torch.randn(out, D, generator=g, dtype=torch.float64)
    deltas = [{"w": torch.randn(out, D, generator=g, dtype=torch.float64)} for _ in range(2)]
    embs = [torch.randn(3, D, generator=g, dtype=torch.float64) for _ in range(3)]
    applies = [(0,), (0, 1), (1,)]
    pres = torch.randn(4, D, generator=g, dtype=torch.float64)
    got = fuse_closed_form({"w": W}, deltas, embs, pres, 0.7, 0.0, applies)["w"]
    lhs = torch.cat([*embs, 0.7**0.5 * pres])
    targets = [W + sum(deltas[i]["w"] for i in idx) for idx in applies]
    rhs = torch.cat([*(e @ t.T for e, t in zip(embs, targets)), 0.7**0.5 * pres @ W.T])
    torch.testing.assert_close(got, torch.linalg.lstsq(lhs, rhs).solution.T, rtol=1e-8, atol=1e-10)
    # one set per concept, each its own delta: the same as the default form
    own = fuse_closed_form({"w": W}, deltas, embs[:2], pres, 0.7, 0.0, [(0,), (1,)])["w"]
    torch.testing.assert_close(own, fuse_closed_form({"w": W}, deltas, embs[:2], pres, 0.7, 0.0)["w"])
    with pytest.raises(ValueError, match="applies"):
        fuse_closed_form({"w": W}, deltas, embs, pres, 0.7, 0.0, [(0,), (2,), (1,)])


def test_concept_lora_and_fusion_on_tiny_model(tiny):
    parts = copy.copy(tiny)
    parts.unet = copy.deepcopy(tiny.unet)
    ft = FinetuneParams(preserve_weight=0.0).updated(method="ant_fusion", batch_size=2, ddim_steps=10, split_step=7, steps=3, lr=1e-2,
                                  lora_rank=2)
    data = _data(parts)
    names = kv_weight_names(parts.unet)
    delta = train_concept_lora(parts, data, ft)
    assert set(delta) == set(names) and names
    for k, d in delta.items():
        assert d.shape == parts.unet.get_parameter(k).shape
        assert 0 < torch.linalg.matrix_rank(d.double(), rtol=1e-4) <= 2  # float32 rounding of B A
    assert not any("lora" in k for k, _ in parts.unet.named_parameters())  # the UNet itself is untouched
    emb = token_embeddings(parts, ["a red circle", "a circle"])
    assert emb.shape == (3 + 2 + 2 * 2, 32)  # BOS + words + EOS per prompt
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    fused = ant_multi_concept(parts, [data, _data(parts, ["a blue square"], 2, 1)], ["a green cross"], ft)
    after = parts.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(names) == set(fused)
