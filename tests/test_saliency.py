"""Localisation arithmetic on hand-made tensors: which neurons a score marks, and how masks compare.

Every expected value here is worked out by hand from the numbers in the test, not from the code.
"""

import pytest
import torch
from torch import nn

from trust.methods.saliency import cross_attention_params, expand_mask, jaccard, mask_size, neuron_scores, zscore_mask


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(2, 3), nn.Linear(2, 3), nn.Linear(2, 3)


class _Unet(nn.Module):
    """A top-level `attn2` (names of exactly three parts), a nested one, and a self-attention."""

    def __init__(self):
        super().__init__()
        self.attn2 = _Block()
        self.down = nn.ModuleDict({"attn2": _Block(), "attn1": _Block()})


def test_cross_attention_params_are_the_weights_of_the_asked_attn2_projections():
    got = cross_attention_params(_Unet(), ["to_k", "to_v"])
    assert list(got) == ["attn2.to_k.weight", "attn2.to_v.weight", "down.attn2.to_k.weight", "down.attn2.to_v.weight"]
    assert all(isinstance(p, nn.Parameter) and p.shape == (3, 2) for p in got.values())
    with pytest.raises(ValueError, match="no cross-attention"):
        cross_attention_params(_Unet(), ["to_out"])


def test_row_scores_are_the_mean_absolute_gradient_of_each_row():
    g = {"w": torch.tensor([[1.0, -3.0], [0.0, -2.0]])}
    assert torch.equal(neuron_scores(g, "row")["w"], torch.tensor([2.0, 1.0]))
    assert torch.equal(neuron_scores(g, "element")["w"], torch.tensor([[1.0, 3.0], [0.0, 2.0]]))


def test_layer_zscores_mark_each_layers_outliers_and_a_score_exactly_at_xi_is_not_marked():
    # layer a: mean 2, unbiased std sqrt(12) = 3.46; layer b: mean 11, std 1
    scores = {"a": torch.tensor([0.0, 0.0, 6.0]), "b": torch.tensor([10.0, 11.0, 12.0])}
    # a: z = (-0.577, -0.577, 1.155); b: z = (-1, 0, 1)
    mask = zscore_mask(scores, xi=1.0, normalise="layer")
    assert mask["a"].tolist() == [0.0, 0.0, 1.0]
    assert mask["b"].tolist() == [0.0, 0.0, 0.0]  # z of 12 is exactly 1.0: not above xi
    assert mask["a"].dtype == torch.float32


def test_global_zscores_compare_neurons_across_layers():
    scores = {"a": torch.tensor([0.0, 0.0, 6.0]), "b": torch.tensor([10.0, 11.0, 12.0])}
    # all six: mean 39/6 = 6.5, unbiased std sqrt(147.5/5) = 5.43; z of 10, 11, 12 = 0.64, 0.83, 1.01;
    # z of 6 = -0.09
    mask = zscore_mask(scores, xi=0.8, normalise="global")
    assert mask["a"].tolist() == [0.0, 0.0, 0.0]
    assert mask["b"].tolist() == [0.0, 1.0, 1.0]
    # one layer alone: global equals per-layer, and a value at exactly xi is again not marked
    one = {"b": torch.tensor([10.0, 11.0, 12.0])}
    assert zscore_mask(one, xi=1.0, normalise="global")["b"].tolist() == [0.0, 0.0, 0.0]
    assert zscore_mask(one, xi=0.99, normalise="global")["b"].tolist() == [0.0, 0.0, 1.0]


def test_constant_scores_mark_nothing_instead_of_dividing_by_zero():
    for normalise in ("layer", "global"):
        mask = zscore_mask({"a": torch.full((4,), 3.0)}, xi=0.0, normalise=normalise)
        assert mask["a"].tolist() == [0.0] * 4


def test_row_masks_broadcast_over_their_rows_and_element_masks_stay():
    w = torch.zeros(3, 2)
    assert expand_mask(torch.tensor([1.0, 0.0, 1.0]), w).tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    element = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    assert expand_mask(element, w) is element


def test_mask_size_and_jaccard_by_hand():
    a = {"x": torch.tensor([1.0, 1.0, 0.0, 0.0]), "y": torch.tensor([1.0, 0.0])}
    b = {"x": torch.tensor([0.0, 1.0, 1.0, 0.0]), "y": torch.tensor([1.0, 0.0])}
    assert mask_size(a) == 3 and isinstance(mask_size(a), int)
    assert jaccard(a, b) == pytest.approx(2 / 4)  # shared: x[1], y[0]; either: x[0..2], y[0]
    assert jaccard(a, a) == 1.0
    empty = {"x": torch.zeros(4), "y": torch.zeros(2)}
    assert jaccard(empty, empty) == 1.0  # two empty masks agree
    assert jaccard(a, empty) == 0.0


def test_global_zscores_of_scores_spread_less_than_one():
    # mean 0.1, unbiased std sqrt(0.06 / 2) = 0.173: z of 0.3 = 1.15 (a floor on the std of 1 would give 0.2)
    mask = zscore_mask({"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([0.3])}, xi=1.0, normalise="global")
    assert mask["a"].tolist() == [0.0, 0.0] and mask["b"].tolist() == [1.0]


def test_forget_loss_is_the_mean_squared_gap_and_leaves_the_anchor_alone():
    from trust.methods.losses import forget_loss

    target = torch.tensor([3.0, 1.0], requires_grad=True)
    anchor = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = forget_loss(target, anchor)
    assert loss.item() == pytest.approx((2.0 ** 2 + 1.0 ** 2) / 2)
    loss.backward()
    assert target.grad.tolist() == [2.0, -1.0] and anchor.grad is None  # d/dx mean((x - a)^2) = (x - a); sg[anchor]
