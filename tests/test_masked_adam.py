"""MaskedAdam (trust/methods/masked_adam.py): torch's Adam where the mask is fixed, Adam's own
step size for a row that enters the mask late."""

import torch

from trust.methods.masked_adam import MaskedAdam

LR = 0.01


def test_without_a_mask_it_is_torch_adam():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours, ref = MaskedAdam([a], lr=LR), torch.optim.Adam([b], lr=LR)
    for _ in range(30):
        g = torch.randn(4, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step({a: torch.ones(4, 3)} if _ % 2 else None)  # an all-ones mask is no mask
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_row_entering_late_takes_adams_step_not_an_oversized_one():
    # Row 1 is outside the mask for 400 steps, then inside with a constant gradient 2.0: Adam's
    # bias-corrected update of a constant gradient is lr per step (m_hat = g, v_hat = g^2), so ten
    # steps move it by 10 * lr. Corrected with the global count (torch's Adam after the moments were
    # zeroed) the same ten steps move it ~3.2x as far (hand: sum_k (1-.9^k) / sqrt((1-.999^k)/(1-.999^(400+k)))).
    p = torch.nn.Parameter(torch.zeros(2, 3))
    opt = MaskedAdam([p], lr=LR)
    row0 = torch.tensor([[1.0], [0.0]]).expand(2, 3)
    for _ in range(400):
        p.grad = torch.full((2, 3), 2.0)
        opt.step({p: row0})
    assert torch.all(p[1] == 0)  # outside the mask: never moved
    torch.testing.assert_close(p[0], torch.full((3,), -400 * LR), rtol=1e-4, atol=1e-6)
    before = p[1].detach().clone()
    for _ in range(10):
        p.grad = torch.full((2, 3), 2.0)
        opt.step({p: torch.ones(2, 3)})
    torch.testing.assert_close(before - p[1].detach(), torch.full((3,), 10 * LR), rtol=1e-4, atol=1e-6)
    assert torch.all(opt.state[p]["step"] == torch.tensor([[410.0], [10.0]]).expand(2, 3))


def test_reset_forgets_a_rows_moments():
    # A row that leaves the mask and comes back starts afresh: its first step after a gradient of
    # -1 is +lr, whatever momentum of +1 gradients it carried before.
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = MaskedAdam([p], lr=LR)
    for _ in range(50):
        p.grad = torch.ones(2, 2)
        opt.step()
    opt.reset(p, torch.tensor([[1.0], [0.0]]).expand(2, 2))
    before = p.detach().clone()
    p.grad = -torch.ones(2, 2)
    opt.step()
    torch.testing.assert_close((p.detach() - before)[1], torch.full((2,), LR), rtol=1e-4, atol=1e-6)
    assert torch.all((p.detach() - before)[0] < 0)  # row 0 kept its momentum: still moving down
