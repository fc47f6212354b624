"""ANT ("Set You Straight", Li, Lu, Ren, Kong): trajectory-aware fine-tuning under an
augmentation-enhanced saliency mask (docs/methods.md, section ANT; the paper, not its code).

Loss (paper Eq. 3), with delta(c) = eps*(x_t,t,c) - eps*(x_t,t,empty) from the frozen model:

    L_preserve     = || eps(x_t1,t1,c) - sg[eps*(x_t1,t1,empty) + eta delta(c)] ||^2    t1 ~ U(t', T)
    L_erase        = || eps(x_t2,t2,c) - sg[eps*(x_t2,t2,empty) - eta delta(c)] ||^2    t2 ~ U(0, t')
    L_uncond-early = || eps(x_t1,t1,empty) - sg[eps*(x_t1,t1,empty)] ||^2
    L_uncond-late  = || eps(x_t2,t2,empty) - sg[eps*(x_t2,t2,empty)] ||^2
    L = L_preserve + l1 L_erase + l2 L_uncond-early + l3 L_uncond-late

Timestep convention (one, used everywhere): t' = `split_step` is an index k of an
`ddim_steps`-step DDIM schedule counted in *diffusion time* (k = 0 the least noisy DDIM
timestep, N-1 the noisiest), as in the paper (t ~ U(t', T), T = 50 on SD v1.4, t' = 43 for
nudity: the first 7 of 50 sampling steps are preserved, the other 43 are steered).
`split_timestep` turns it into a training timestep t'_train = the k-th smallest timestep of the
model's DDIM schedule (diffusers' own `set_timesteps`; leading spacing, 1000 steps, N = 50:
20k + 1). Per step one t1 is drawn uniformly from the training timesteps {t'_train .. T_train-1}
(early = high noise) and one t2 from {0 .. t'_train-1}; each is shared by the whole batch.
x_t: the reference latents of ForgetData noised to t1 and to t2 (independent noises).

Updates are restricted to the intersected saliency mask (saliency.py); weights outside it
stay bit-identical (masked gradients, Adam state starts at zero). The mask is static.
"""

from __future__ import annotations

import torch

from trust.methods.ant.saliency import ant_scope_params, intersected_saliency_mask, plot_mask_history
from trust.methods.base import Method
from trust.utils.seeding import torch_generator

__all__ = ["AntMethod", "ant_loss", "split_timestep", "draw_timesteps", "plot_mask_history"]


def split_timestep(scheduler, split_step: int, ddim_steps: int) -> int:
    """t'_train: the `split_step`-th smallest timestep of a `ddim_steps`-step DDIM schedule."""
    if not 1 <= split_step < ddim_steps:
        raise ValueError(f"finetune.method.split_step ({split_step}) must be in [1, ddim_steps-1={ddim_steps - 1}]")
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(ddim_steps)
    asc = torch.sort(sched.timesteps).values
    return int(asc[split_step])


def draw_timesteps(g: torch.Generator, t_split: int, num_train: int) -> tuple[int, int]:
    """(t1, t2): t1 ~ U{t_split .. num_train-1} (early, noisy), t2 ~ U{0 .. t_split-1} (mid-to-late)."""
    t1 = int(torch.randint(t_split, num_train, (1,), generator=g))
    t2 = int(torch.randint(0, t_split, (1,), generator=g))
    return t1, t2


def ant_loss(unet, frozen, scheduler, x0, noise1, noise2, t1: int, t2: int, c, uncond, eta: float,
             l1: float, l2: float, l3: float) -> dict[str, torch.Tensor]:
    """The four terms of Eq. 3 and their weighted sum ("loss"), for one (t1, t2) pair."""
    n = x0.shape[0]
    tt1 = torch.full((n,), t1, dtype=torch.long)
    tt2 = torch.full((n,), t2, dtype=torch.long)
    x1 = scheduler.add_noise(x0, noise1, tt1)
    x2 = scheduler.add_noise(x0, noise2, tt2)
    u = uncond.expand_as(c)
    with torch.no_grad():  # frozen predictions at both timesteps, conditional and unconditional, one call
        out = frozen(torch.cat([x1, x1, x2, x2]), torch.cat([tt1, tt1, tt2, tt2]),
                     encoder_hidden_states=torch.cat([c, u, c, u])).sample
        f1c, f1u, f2c, f2u = out.chunk(4)
        preserve_target = f1u + eta * (f1c - f1u)
        erase_target = f2u - eta * (f2c - f2u)
    # the model at both timesteps, conditional and unconditional, one call
    e1c, e1u, e2c, e2u = unet(torch.cat([x1, x1, x2, x2]), torch.cat([tt1, tt1, tt2, tt2]),
                              encoder_hidden_states=torch.cat([c, u, c, u])).sample.chunk(4)
    terms = {
        "l_preserve": ((e1c - preserve_target) ** 2).mean(),
        "l_erase": ((e2c - erase_target) ** 2).mean(),
        "l_uncond_early": ((e1u - f1u) ** 2).mean(),
        "l_uncond_late": ((e2u - f2u) ** 2).mean(),
    }
    terms["loss"] = terms["l_preserve"] + l1 * terms["l_erase"] + l2 * terms["l_uncond_early"] \
        + l3 * terms["l_uncond_late"]
    return terms


class AntMethod(Method):
    name = "ant"

    @classmethod
    def needs_keep(cls, ft) -> bool:
        return ft.preserve_weight > 0

    def select_parameters(self):
        return ant_scope_params(self.parts.unet, self.cfg.scope)

    @property
    def t_split(self) -> int:
        return split_timestep(self.parts.scheduler, self.cfg.split_step, self.cfg.ddim_steps)

    def setup(self, initial_mask):
        # ANT makes its own mask; an initial (localize-stage) mask is not used.
        self._t_split = self.t_split  # validates the split step
        self.mask, self.mask_history = intersected_saliency_mask(self, self.params)
        self.params = {k: p for k, p in self.params.items() if k in self.mask}

    def batch(self, step: int, size: int | None = None):
        """(x0, noise1, noise2, t1, t2, c) of step `step`: a function of (seed, step) alone."""
        g = torch_generator(self.ft.seed, step, 5)
        n = size or self.ft.batch_size
        idx = self.data.draw(n, g)  # several concepts: n rows of each
        x0 = self.data.latents[idx]
        noise1 = torch.randn(x0.shape, generator=g)
        noise2 = torch.randn(x0.shape, generator=g)
        t1, t2 = draw_timesteps(g, self._t_split, self.parts.scheduler.config.num_train_timesteps)
        return x0, noise1, noise2, t1, t2, self.data.target_emb[idx]

    def terms(self, x0, noise1, noise2, t1, t2, c) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        return ant_loss(self.parts.unet, self.frozen, self.parts.scheduler, x0, noise1, noise2, t1, t2, c,
                        self.uncond, cfg.eta, cfg.l1, cfg.l2, cfg.l3)

    def step(self, step: int) -> dict:
        info: dict = {}
        if not self.params:  # empty mask: nothing can change
            return {"loss": 0.0, "mask_size": 0, "ant_maps": len(self.mask_history)}
        x0, n1, n2, t1, t2, c = self.batch(step)
        terms = self.terms(x0, n1, n2, t1, t2, c)
        loss = self.with_preservation(terms["loss"], step, info)
        self.update(loss)
        info.update({k: v.item() for k, v in terms.items()})
        info.update({"loss": loss.item(), "l_prev": terms["l_erase"].item(), "t1": t1, "t2": t2,
                     "ant_maps": len(self.mask_history), **self.mask_info()})
        return info

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"ant.mask_history": torch.tensor(self.mask_history, dtype=torch.long)} if self.mask_history else {}

    def load_extra_state(self, t: dict[str, torch.Tensor]) -> None:
        if "ant.mask_history" in t:
            self.mask_history = [int(v) for v in t["ant.mask_history"]]
