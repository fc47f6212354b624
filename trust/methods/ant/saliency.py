"""ANT's augmentation-enhanced saliency map (paper Eq. 4-6).

For each concept prompt c_i (the distinct train target prompts of ForgetData) and each of N_s
seeds s_j, one map M_ij = 1(|grad_theta L(theta; c_i, s_j)| >= gamma), with L the ANT loss
(Eq. 3) at the original weights on the prompt's reference latents, with noises and (t1, t2)
drawn from the seed. The final mask is the intersection (elementwise AND) of all maps, at most
`max_maps` of them, taken seeds-outer / prompts-inner so a short budget still sees every
prompt. `mask_history[n-1]` is the active-parameter count after intersecting n maps (it should
level off: the paper's ~100 maps); `plot_mask_history` draws it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trust.utils.seeding import torch_generator


def ant_scope_params(unet: nn.Module, scope: str) -> dict[str, nn.Parameter]:
    """UNet parameters ANT may touch: all (`unet`), cross-attention only (`attn2`) or the rest."""
    if scope == "unet":
        return dict(unet.named_parameters())
    want = scope == "attn2"
    return {k: p for k, p in unet.named_parameters() if (".attn2." in k) == want}


def threshold_map(grads: dict[str, torch.Tensor], gamma: float) -> dict[str, torch.Tensor]:
    """M = 1(|g| >= gamma), as bool tensors."""
    return {k: g.abs() >= gamma for k, g in grads.items()}


def intersect_masks(maps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Elementwise AND of the maps (bool)."""
    out = {k: v.bool().clone() for k, v in maps[0].items()}
    for m in maps[1:]:
        for k in out:
            out[k] &= m[k].bool()
    return out


def map_plan(n_prompts: int, seeds: int, max_maps: int) -> list[tuple[int, int]]:
    """(prompt index, seed index) of each map, seeds-outer, capped at max_maps."""
    return [(i, j) for j in range(seeds) for i in range(n_prompts)][:max_maps]


def intersected_saliency_mask(method, params: dict[str, nn.Parameter]):
    """(mask name -> float 0/1 tensor with at least one 1, mask_history) for an AntMethod set-up."""
    ft, cfg, data = method.ft, method.cfg, method.data
    prompts = list(dict.fromkeys(data.prompts))
    refs = {p: [i for i, q in enumerate(data.prompts) if q == p] for p in prompts}
    acc: dict[str, torch.Tensor] | None = None
    history: list[int] = []
    for p in params.values():
        p.requires_grad_(True)
    try:
        for i, j in map_plan(len(prompts), cfg.seeds, cfg.max_maps):
            g = torch_generator(ft.seed, 2_000_000 + j, i)
            pool = torch.tensor(refs[prompts[i]])
            idx = pool[torch.randint(0, len(pool), (cfg.saliency_batch,), generator=g)]
            x0 = data.latents[idx]
            n1, n2 = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)
            from trust.methods.ant.method import draw_timesteps

            t1, t2 = draw_timesteps(g, method._t_split, method.parts.scheduler.config.num_train_timesteps)
            loss = method.terms(x0, n1, n2, t1, t2, data.target_emb[idx])["loss"]
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
            grads = {k: (torch.zeros_like(params[k]) if v is None else v) for k, v in grads.items()}
            m = threshold_map(grads, cfg.gamma)
            acc = m if acc is None else intersect_masks([acc, m])
            history.append(int(sum(int(v.sum()) for v in acc.values())))
    finally:
        for p in params.values():
            p.requires_grad_(False)
    mask = {k: v.float() for k, v in (acc or {}).items() if v.any()}
    return mask, history


def plot_mask_history(history: list[int], path: Path, title: str = "ANT saliency: active parameters") -> Path:
    """Active-parameter count vs number of intersected maps (should level off)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(history) + 1), history, marker="." if len(history) < 60 else None)
    ax.set_xlabel("intersected maps")
    ax.set_ylabel("active parameters")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
