"""ESD (Erased Stable Diffusion, Gandikota et al. 2023) with negative guidance.

Loss `|| eps(x_t,t,c) - sg[eps*(x_t,t,empty) - eta (eps*(x_t,t,c) - eps*(x_t,t,empty))] ||^2`.
`variant` x trains every cross-attention (attn2) parameter, u every other UNet parameter.
x_t (xt: ddim, as ESD): the frozen model samples the target prompt with guidance
`guidance` from seeded noise to a random step k of an `ddim_steps` DDIM schedule;
t is that schedule's k-th timestep. xt: reference noises a reference image instead.
"""

from __future__ import annotations

import torch

from trust.methods.adversarial import with_rows
from trust.methods.base import Method
from trust.methods.losses import forget_loss
from trust.sampling import initial_noise
from trust.utils.seeding import torch_generator


def is_cross_attention(name: str) -> bool:
    return ".attn2." in name


class EsdMethod(Method):
    name = "esd"

    def select_parameters(self):
        want_x = self.cfg.variant == "x"
        return {k: p for k, p in self.parts.unet.named_parameters() if is_cross_attention(k) == want_x}

    @torch.no_grad()
    def ddim_xt(self, step: int):
        """(x_t, t, c_in, c_target): the frozen model's own trajectory for the target prompts, stopped at step k;
        c_in is what the trained model sees (c_target, and adversarial conditions in the extra rows)."""
        g = torch_generator(self.ft.seed, step, 1)
        n = self.ft.batch_size
        if self.adversary is None:
            idx, adv = torch.randint(0, len(self.data), (n,), generator=g), None
        else:  # extra rows: prompts the inner attack broke, with its conditions (trust/methods/adversarial.py)
            idx, adv = self.adversary.rows(n, g)
            n = len(idx)
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=g).tolist()
        k = int(torch.randint(0, self.cfg.ddim_steps, (1,), generator=g))
        c = self.data.target_emb[idx]
        sched = self.parts.sampling_scheduler()
        sched.set_timesteps(self.cfg.ddim_steps)
        x = initial_noise(self.parts, seeds).to(c.device) * sched.init_noise_sigma
        ctx = torch.cat([self.uncond.expand_as(c), c])
        for t in sched.timesteps[:k]:
            e_u, e_c = self.frozen(sched.scale_model_input(torch.cat([x, x]), t), t,
                                   encoder_hidden_states=ctx).sample.chunk(2)
            x = sched.step(e_u + self.cfg.guidance * (e_c - e_u), t, x, eta=0.0).prev_sample
        t = sched.timesteps[k].expand(n)
        return x, t, with_rows(c, adv), c

    def step(self, step: int) -> dict:
        info = {}
        if self.cfg.xt == "ddim":
            if self.adversary is not None:
                self.adversary.refresh(step, info)
            x_t, t, c_in, c = self.ddim_xt(step)
        else:
            x_t, t, c_in, c, _ = self.forget_batch(step, info)
        # AdvUnlearn's ESD loss: the trained model sees c_in (adversarial rows), the target is the clean prompt's
        target = self.negative_guidance(x_t, t, c)
        l_prev = forget_loss(self.parts.unet(x_t, t, encoder_hidden_states=c_in).sample, target)
        loss = self.with_preservation(l_prev, step, info)
        self.update(loss)
        info.update({"loss": loss.item(), "l_prev": l_prev.item()})
        return info
