"""UCE and RECE (trust/methods/uce, trust/methods/rece): the closed-form edit by hand, the position
alignment by hand, RECE's adversarial embedding against a direct solve, and both methods on the
shipped world (only attn2 to_k/to_v change, one step, resume, the concept's detection falls)."""

import copy

import pytest
import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.loop import build_method, train
from trust.methods.rece.method import adversarial_embeddings
from trust.methods.uce.method import aligned_positions, solve_edit

ROWS = [{"prompt": "a red circle", "anchor": "a plain background"},
        {"prompt": "a blue circle on a striped background", "anchor": "a striped background"}]
KEEP = [{"prompt": "a red square", "anchor": None}, {"prompt": "a green cross", "anchor": None}]


def test_solve_edit_by_hand():
    """D = 4, one erased state e1 whose target is W_old e4, preserved e2 and e3: the normal equations
    give column 1 = (lamb W e1 + es W e4) / (lamb + es), columns 2-4 unchanged (e4 is spoken for only
    by the ridge, which keeps it)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    e = torch.eye(4, dtype=torch.float64)
    es, ps, lamb = 2.0, 3.0, 0.5
    new = solve_edit(w, e[[0]], (e[[3]] @ w.T), e[[1, 2]], es, ps, lamb)
    want = w.clone()
    want[:, 0] = (lamb * w[:, 0] + es * w[:, 3]) / (lamb + es)
    assert torch.allclose(new, want, atol=1e-12)
    # without preserved rows the preserved columns are held by the ridge alone: still unchanged here
    # (orthogonal rows), but an erased row that overlaps them moves them
    overlap = solve_edit(w, (e[0] + e[1])[None], (e[[3]] @ w.T), e[[1, 2]][:0], es, 0.0, lamb)
    assert not torch.allclose(overlap[:, 1], w[:, 1])
    held = solve_edit(w, (e[0] + e[1])[None], (e[[3]] @ w.T), e[[1, 2]], es, 1e6, lamb)
    assert torch.allclose(held[:, 1], w[:, 1], atol=1e-4)


def test_aligned_positions_by_hand():
    """'a red circle on a plain background' -> 'a plain background' (ids stand in for tokens; 9 = EOS,
    0 = padding): from the first differing position (red, 2) on, right-aligned at EOS (8 -> 4), the
    concept's words clamped onto the anchor's first own word (plain, 2)."""
    B, a, red, circle, on, plain, bg, E, P = 1, 2, 3, 4, 5, 6, 7, 9, 0
    target = [B, a, red, circle, on, a, plain, bg, E, P, P]
    anchor = [B, a, plain, bg, E, P, P, P, P, P, P]
    pairs = aligned_positions(target, anchor, 8, 4, "concept")
    assert pairs == [(2, 2), (3, 2), (4, 2), (5, 2), (6, 2), (7, 3), (8, 4), (9, 5), (10, 6)]
    assert aligned_positions(target, anchor, 8, 4, "all")[0] == (1, 2)  # 'a' too (BOS never)
    assert aligned_positions(target, target, 8, 8, "concept") == []


def test_adversarial_embedding_is_the_direct_least_squares_solution():
    """c' = argmin sum_l ||W_l c' - W_old,l c||^2 + r s ||c'||^2, checked against the solution of the
    stacked system [W_1; W_2; sqrt(r s) I] c' = [W_old,1 c; W_old,2 c; 0] by lstsq."""
    g = torch.Generator().manual_seed(1)
    old = {k: torch.randn(5, 3, generator=g, dtype=torch.float64) for k in ("k", "v")}
    new = {k: w + 0.3 * torch.randn(5, 3, generator=g, dtype=torch.float64) for k, w in old.items()}
    c = torch.randn(2, 3, generator=g, dtype=torch.float64)
    r = 0.1
    s = float(sum(w.T @ w for w in new.values()).diagonal().mean())
    a = torch.cat([new["k"], new["v"], (r * s) ** 0.5 * torch.eye(3, dtype=torch.float64)])
    for i in range(2):
        b = torch.cat([old["k"] @ c[i], old["v"] @ c[i], torch.zeros(3, dtype=torch.float64)])
        want = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
        assert torch.allclose(adversarial_embeddings(new, old, c[i:i + 1], r)[0], want, atol=1e-10)


@pytest.fixture(scope="module")
def world_data(shipped_world):
    return (ForgetData.build(shipped_world, ROWS, references=2, seed=0),
            ForgetData.build(shipped_world, KEEP, references=2, seed=1))


def _build(world, world_data, method: dict):
    parts = copy.copy(world)
    parts.unet = copy.deepcopy(world.unet)
    data, keep = world_data
    ft = FinetuneParams().updated(method=method)
    return parts, build_method(parts, data, ft, LocalizeParams(), keep=keep)


@pytest.mark.parametrize("method", [{"name": "uce"}, {"name": "uce", "projections": "v"}, {"name": "rece", "rounds": 2}])
def test_edit_changes_only_cross_attention_projections_in_one_step(shipped_world, world_data, method):
    parts, m = _build(shipped_world, world_data, method)
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    assert m.trainable_parameters() == 0 and not any(p.requires_grad for p in parts.unet.parameters())
    info = m.step(0)
    assert m.finished and info["erase_rows"] > 0 and info["preserve_rows"] > 0
    # the erased rows now land much closer to their anchors' projections; the preserved ones move less
    # than the erased ones did
    assert info["erase_residual"] < 0.5 and info["preserve_change"] < 1 - info["erase_residual"], info
    after = parts.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    suffixes = (".attn2.to_v.weight",) if method.get("projections") == "v" else (".attn2.to_k.weight",
                                                                                 ".attn2.to_v.weight")
    want = {k for k in before if k.endswith(suffixes)}
    assert changed == want
    assert m.step(1) == info and all(torch.equal(v, after[k]) for k, v in parts.unet.state_dict().items())
    # resume: a method loaded from the state after its step holds the edited weights and does not edit again
    parts2, m2 = _build(shipped_world, world_data, method)
    m2.load_state_tensors({k: v.clone() for k, v in m.state_tensors().items()})
    assert m2.finished
    assert all(torch.equal(v, after[k]) for k, v in parts2.unet.state_dict().items())


def test_rece_rounds_close_the_adversarial_embeddings_gap(shipped_world, world_data):
    """Each RECE round erases the embeddings that best bring the concept back through the edited
    projections, so the next round's best embedding is further off: the gap grows round by round
    (a round that re-solved without its adversarial rows would leave it where UCE put it)."""
    _, m = _build(shipped_world, world_data, {"name": "rece", "rounds": 3})
    info = m.step(0)
    gaps = [info["round1_adv_gap"], info["round2_adv_gap"], info["round3_adv_gap"], info["adv_gap"]]
    assert all(b > a + 1e-3 for a, b in zip(gaps, gaps[1:])), gaps
    assert info["erase_residual"] < 0.5, info


def test_preservation_rows_hold_the_preserved_prompts(shipped_world, world_data):
    """Without preserved rows (preserve_scale 0: no preservation prompts are even built) the
    preservation prompts' projections move several times more than with them."""
    parts = copy.copy(shipped_world)
    parts.unet = copy.deepcopy(shipped_world.unet)
    ft = FinetuneParams().updated(method={"name": "uce", "preserve_scale": 0.0})
    bare = build_method(parts, world_data[0], ft, LocalizeParams(), keep=lambda: pytest.fail("keep built"))
    info = bare.step(0)
    assert info["preserve_rows"] == 0
    _, held = _build(shipped_world, world_data, {"name": "uce"})
    c, a, p = held.rows()
    moved = held.residuals(bare.solve(c, a, p[:0]), c, a, p)["preserve_change"]
    kept = held.residuals(held.solve(c, a, p), c, a, p)["preserve_change"]
    assert moved > 2 * kept, (moved, kept)


@pytest.mark.parametrize("name", ["uce", "rece"])
def test_edit_lowers_target_detection(shipped_world, shipped_classifier, shipped_params, name):
    """Through the one training loop, on the shipped concept's train prompts: held-out prompts draw the
    concept far less often, a kept concept as often as before."""
    from trust.concepts import build_prompt_sets
    from trust.methods.data import preserve_data
    from trust.sampling import generate
    from trust.stages.evaluate import detected

    concept = shipped_params.concept
    sets = build_prompt_sets(concept, shipped_params.prompts)
    held_out = [r["prompt"] for r in sets["target"]["eval"]][:12]
    kept = concept.keep[0]
    kept_prompts = [r["prompt"] for r in sets["preserve"]["eval"]
                    if all(r["labels"].get(h) == v for h, v in kept.items())][:8]
    assert len(kept_prompts) >= 4

    def rate(parts, prompts, labels):
        images = generate(parts, prompts, list(range(len(prompts))), steps=10, guidance=4.0)
        return sum(detected(shipped_classifier.predict(images), labels)) / len(prompts)

    parts = copy.copy(shipped_world)
    parts.unet = copy.deepcopy(shipped_world.unet)
    ft = shipped_params.finetune.updated(method={"name": name}, references=len(sets["target"]["train"]))
    data = ForgetData.build(parts, sets["target"]["train"], ft.references, ft.seed)
    before, kept_before = rate(parts, held_out, concept.detect), rate(parts, kept_prompts, kept)
    method = build_method(parts, data, ft, shipped_params.localize,
                          keep=lambda: preserve_data(parts, sets["preserve"]["train"], ft))
    result = train(method, 5)
    assert result.steps_run == 1
    after, kept_after = rate(parts, held_out, concept.detect), rate(parts, kept_prompts, kept)
    assert before >= 0.5 and after <= before - 0.4, (before, after)
    assert kept_after >= kept_before - 0.25, (kept_before, kept_after)
