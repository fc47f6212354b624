import copy

import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.saliency import cross_attention_params
from trust.methods.trust.method import TrustMethod, denoise_saliency

ROWS = [{"prompt": "a red circle", "anchor": "a plain background"},
        {"prompt": "a blue circle", "anchor": "a striped background"}]


def _setup(shipped_world, **ft):
    parts = copy.copy(shipped_world)
    parts.unet = copy.deepcopy(shipped_world.unet)
    data = ForgetData.build(parts, ROWS, references=4, seed=0)
    loc = LocalizeParams(batch_size=4, xi=1.0)
    params = cross_attention_params(parts.unet, loc.modules)
    mask = denoise_saliency(parts.unet, parts.unet, params, data, parts, loc, 0, 0)
    return parts, data, loc, mask, FinetuneParams(preserve_weight=0.0).updated(batch_size=4, **ft)


def test_mask_selects_only_cross_attention_rows(shipped_world):
    parts, data, loc, mask, ft = _setup(shipped_world)
    assert mask and all(".attn2.to_" in k for k in mask)
    assert all(m.dim() == 1 and m.shape[0] == parts.unet.get_parameter(k).shape[0] for k, m in mask.items())
    assert 0 < sum(int(m.sum()) for m in mask.values()) < sum(m.numel() for m in mask.values())


def test_step_changes_only_masked_rows(shipped_world):
    parts, data, loc, mask, ft = _setup(shipped_world, dynamic=False, steps=2)
    before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    method = TrustMethod(parts, data, ft, loc, mask)
    assert not any(p.requires_grad for n, p in parts.unet.named_parameters() if n not in mask)
    for s in range(2):
        method.step(s)
    after = parts.unet.state_dict()
    for k, v in before.items():
        if k in mask:
            changed_rows = (after[k] != v).any(dim=1)
            assert changed_rows.any()
            assert not (changed_rows & ~mask[k].bool()).any(), k  # only masked rows moved
        else:
            assert torch.equal(after[k], v), k  # frozen: bit-identical


def test_reestimation_moves_the_mask_and_rows_that_leave_it_stop_moving(shipped_world):
    """Re-estimation from the current weights really changes the mask (and the method trains under
    the new one); a row that leaves the mask gets no further update: its gradient is masked AND its
    Adam moments are cleared (momentum alone would keep it moving); rows that stay keep moving."""
    parts, data, loc, mask, ft = _setup(shipped_world, reestimate_every=3, lr=0.05)
    method = TrustMethod(parts, data, ft, loc, mask)
    for s in range(3):
        method.step(s)
    old = {k: v.clone().bool() for k, v in method.mask.items()}
    weights = {k: p.detach().clone() for k, p in method.params.items()}
    info = method.step(3)  # re-estimates first, then steps under the new mask
    new = {k: v.bool() for k, v in method.mask.items()}
    left = {k: old[k] & ~new[k] for k in old}
    stayed = {k: old[k] & new[k] for k in old}
    n_left = sum(int(v.sum()) for v in left.values())
    assert n_left > 0 and info["jaccard"] < 1.0  # the mask moved, and self.mask is the moved one
    for s in (4, 5):
        method.step(s)
    for k, p in method.params.items():
        w = p.detach()
        assert torch.equal(w[left[k]], weights[k][left[k]]), f"{k}: rows that left the mask moved"
    moved = sum(int((method.params[k].detach()[stayed[k]] != weights[k][stayed[k]]).any(dim=-1).sum()) for k in stayed)
    assert moved > 0
