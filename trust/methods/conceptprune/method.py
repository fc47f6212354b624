"""ConceptPrune (Chavhan et al. 2024): training-free erasure by pruning "skilled neurons".

For every second FFN linear (`ff.net.2`) and each of the first `conceptprune_timesteps`
timesteps of a `conceptprune_ddim_steps` DDIM trajectory (sampled by the model itself, with
guidance, from the same seeds for both prompt sets), the Wanda score of each weight is
`S = |W| * ||X||`, X the layer's input over all tokens of the conditional pass. Target prompts
give S_t, base prompts (each target's anchor) S_b. Per timestep and per output row, the
selected weights are the top `ceil(conceptprune_fraction * in_features)` of S_t among those
with S_t > S_b (choice); the union over timesteps is set to zero. All of it happens in the
first `step`; later steps change nothing (`finished`).
"""

from __future__ import annotations

import math

import torch

from trust.methods.base import Method
from trust.methods.saliency import mask_size
from trust.sampling import initial_noise


def ffn_out_layers(unet) -> dict[str, torch.nn.Linear]:
    out = {f"{n}.weight": m for n, m in unet.named_modules() if n.endswith("ff.net.2") and isinstance(m, torch.nn.Linear)}
    if not out:
        raise ValueError("conceptprune: the UNet has no feed-forward output layers (ff.net.2)")
    return out


def wanda_select(score_target: torch.Tensor, score_base: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per row: the top ceil(fraction * row length) target scores among entries where target > base."""
    k = max(1, math.ceil(fraction * score_target.shape[1]))
    eligible = score_target > score_base
    ranked = torch.where(eligible, score_target, torch.full_like(score_target, -math.inf))
    top = torch.topk(ranked, k, dim=1).indices
    sel = torch.zeros_like(eligible)
    sel.scatter_(1, top, True)
    return sel & eligible


class ConceptPruneMethod(Method):
    name = "conceptprune"
    needs_frozen = False

    @classmethod
    def needs_keep(cls, ft) -> bool:
        return False

    def select_parameters(self):
        return {}  # training-free: nothing gets a gradient

    def setup(self, initial_mask):
        self.layers = ffn_out_layers(self.parts.unet)
        self.pruned = 0

    @torch.no_grad()
    def input_norms(self, cond: torch.Tensor, seeds: list[int]) -> list[dict[str, torch.Tensor]]:
        """||X|| per input feature of every ff.net.2, for each of the first timesteps of the trajectory."""
        parts = self.parts
        sched = parts.sampling_scheduler()
        sched.set_timesteps(self.cfg.ddim_steps)
        record = {"on": False, "acc": {}}

        def hook(name):
            def fn(module, args):
                if record["on"]:
                    x = args[0].reshape(-1, args[0].shape[-1]).float()
                    record["acc"][name] = record["acc"].get(name, 0) + (x**2).sum(0)
            return fn

        handles = [m.register_forward_pre_hook(hook(k)) for k, m in self.layers.items()]
        norms = []
        try:
            x = initial_noise(parts, seeds).to(cond.device) * sched.init_noise_sigma
            for t in sched.timesteps[: self.cfg.timesteps]:
                model_in = sched.scale_model_input(x, t)
                record["on"], record["acc"] = True, {}
                e_c = parts.unet(model_in, t, encoder_hidden_states=cond).sample
                norms.append({k: v.sqrt() for k, v in record["acc"].items()})
                record["on"] = False
                e_u = parts.unet(model_in, t, encoder_hidden_states=self.uncond.expand_as(cond)).sample
                x = sched.step(e_u + self.cfg.guidance * (e_c - e_u), t, x, eta=0.0).prev_sample
        finally:
            for h in handles:
                h.remove()
        return norms

    @torch.no_grad()
    def select(self) -> dict[str, torch.Tensor]:
        seeds = [self.ft.seed * 100_003 + 7 + i for i in range(len(self.data))]
        n_t = self.input_norms(self.data.target_emb, seeds)
        n_b = self.input_norms(self.data.anchor_emb, seeds)
        mask = {}
        for k, layer in self.layers.items():
            w = layer.weight.abs()
            sel = torch.zeros_like(w, dtype=torch.bool)
            for nt, nb in zip(n_t, n_b):
                sel |= wanda_select(w * nt[k][None, :], w * nb[k][None, :], self.cfg.fraction)
            mask[k] = sel.float()
        return mask

    def step(self, step: int) -> dict:
        if not self.finished:
            self.mask = self.select()
            with torch.no_grad():
                for k, layer in self.layers.items():
                    layer.weight.mul_(1 - self.mask[k])
            self.finished = True
        return {"mask_size": mask_size(self.mask), "pruned": mask_size(self.mask)}

    def trainable_parameters(self) -> int:
        return 0

    def extra_state(self):
        out = {"conceptprune.finished": torch.tensor([int(self.finished)])}
        if self.finished:
            out.update({f"conceptprune.weight.{k}": l.weight.detach() for k, l in self.layers.items()})
        return out

    def load_extra_state(self, t):
        self.finished = bool(int(t["conceptprune.finished"][0]))
        if self.finished:
            with torch.no_grad():
                for k, layer in self.layers.items():
                    layer.weight.copy_(t[f"conceptprune.weight.{k}"])
