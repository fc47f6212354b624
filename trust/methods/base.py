"""The one interface every unlearning method implements (see docs/methods.md).

A method is set up from the model parts, the prompt data and the parameters (its own knobs are
`self.cfg`, i.e. `ft.method`) and builds its own initial state in `setup` (TRUST its mask,
through its scorer; SalUn its saliency mask); then `step(step)` does one optimisation step and
returns the numbers to log; `materialise()` writes what training holds elsewhere (ANT+fusion's
LoRA) into `parts.unet`, and `finish()` ends training. The loop that drives them is loop.py. Every parameter
outside `self.params` has requires_grad=False (no backward work, no optimizer state);
`self.mask` (name -> 0/1 tensor, per row or per element) restricts updates further.
`state_tensors` / `load_state_tensors` give a flat, safetensors-friendly state for resume;
the step RNG is keyed by the step number, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.losses import forget_loss, negative_guidance_target
from trust.methods.masked_adam import MaskedAdam
from trust.methods.prior import STREAM
from trust.methods.saliency import expand_mask, mask_size
from trust.models.parts import DiffusionParts
from trust.models.precision import LossScale, stored_copy

if TYPE_CHECKING:
    from trust.methods.loop import Resources


class Method:
    name = "base"
    needs_frozen = True  # keeps a frozen copy of the original UNet (the training targets)
    finished = False  # True once further steps would change nothing (training-free methods)
    keep_pool = None  # a TargetPool of preservation rows (trust/methods/target_pool.py), set by methods that use one

    def __init__(self, parts: DiffusionParts, data: ForgetData, ft: FinetuneParams, loc: LocalizeParams,
                 initial_mask: dict[str, torch.Tensor] | None = None, keep: ForgetData | None = None,
                 resources: "Resources | None" = None):
        self.parts, self.data, self.ft, self.loc, self.keep = parts, data, ft, loc, keep
        self.cfg = ft.method  # this method's own knobs (trust/methods/<name>/config.py)
        self.resources = resources
        if self.needs_keep(ft) and keep is None:
            raise ValueError(f"finetune.method={self.name}: {self.keep_reason()} needs preservation prompts "
                             "(concept.preserve)")
        parts.unet.requires_grad_(False)
        if ft.gradient_checkpointing:
            # before the frozen copy: a copy that is trained (ANT+fusion's LoRA UNet) inherits it; the frozen
            # targets run without gradients, where diffusers' blocks do not checkpoint
            parts.unet.enable_gradient_checkpointing()
        # model.dtype other than float32: the frozen copy is stored in it (only ever run under autocast)
        self.frozen = stored_copy(parts.unet, parts.compute_dtype).eval() if self.needs_frozen else parts.unet
        with torch.no_grad():
            self.uncond = parts.encode_text([""])
        self.mask: dict[str, torch.Tensor] = {}
        self.params: dict[str, torch.nn.Parameter] = self.select_parameters()
        self.setup(initial_mask)
        for p in self.params.values():
            p.requires_grad_(True)
        # Adam whose bias correction counts each row's own steps in the mask (trust/methods/masked_adam.py)
        self.opt = MaskedAdam(list(self.params.values()), lr=ft.lr) if self.params else None
        self.loss_scale = LossScale(parts.compute_dtype, parts.unet.device)  # float16: dynamic loss scaling
        self.initial_keep_weight, self.initial_lr = self.keep_weight(), ft.lr
        self.prior = None
        if ft.prior.enabled:  # finetune.prior: concept-free replay joins every step (trust/methods/prior.py)
            self.prior = (resources.prior if resources is not None else None)
            if self.prior is None:
                raise ValueError("finetune.prior.enabled: no replay data was given (the finetune stage builds it from "
                                 "the preservation prompts: Resources.prior)")
        # finetune.prior.modules: unet: every other UNet weight, trained by the replay term alone
        self.prior_params: dict[str, torch.nn.Parameter] = {}
        self.prior_opt, self._prior_grads = None, None
        if self.prior is not None and ft.prior.modules == "unet":
            own = {id(p) for p in self.params.values()}
            self.prior_params = {n: p for n, p in parts.unet.named_parameters() if id(p) not in own}
            self.prior_opt = torch.optim.Adam(list(self.prior_params.values()), lr=ft.prior.lr)
        self.adversary = None
        if ft.adversarial.enabled:  # finetune.adversarial: an inner attack joins the forget batch
            from trust.methods.adversarial import Adversary

            self.adversary = Adversary(self)

    # -- what a method defines ---------------------------------------------------------
    @classmethod
    def needs_keep(cls, ft: FinetuneParams) -> bool:
        """Whether set-up needs the preservation-prompt data (`keep`)."""
        return ft.preserve_weight > 0

    def keep_reason(self) -> str:
        return f"finetune.preserve_weight={self.ft.preserve_weight} > 0"

    def select_parameters(self) -> dict[str, torch.nn.Parameter]:
        raise NotImplementedError

    def setup(self, initial_mask: dict[str, torch.Tensor] | None) -> None:
        """Method-specific set-up (masks); may narrow `self.params`."""

    def step(self, step: int) -> dict:
        raise NotImplementedError

    def materialise(self) -> None:
        """Make `parts.unet` hold the weights training has reached (idempotent; most methods train
        `parts.unet` itself, so nothing to do). Called before any mid-training check."""

    def finish(self) -> None:
        """After the last step: the UNet's weights are final."""
        self.materialise()

    # -- what erase-to-a-bar adapts (trust/methods/stopping.py) --------------------------
    def keep_weight(self) -> float:
        """Weight of the term that keeps the preservation prompts (0: none)."""
        return self.ft.preserve_weight

    def set_keep_weight(self, w: float) -> None:
        self.ft = self.ft.updated(preserve_weight=w)
        self.cfg = self.ft.method

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"] if self.opt else self.ft.lr

    def set_lr(self, lr: float) -> None:
        if self.opt:
            for g in self.opt.param_groups:
                g["lr"] = lr

    # -- shared pieces ---------------------------------------------------------------
    def trainable_parameters(self) -> int:
        """Entries of the tensors that have requires_grad=True (what backward and Adam pay for)."""
        return int(sum(p.numel() for p in self.params.values()))

    def current_mask(self) -> dict[str, torch.Tensor]:
        return self.mask

    def forget_batch(self, step: int, info: dict):
        """The forget batch of `step`: (x_t, t, c_in, c_target, c_anchor). The trained model sees `c_in`;
        the training target comes from the clean `c_target` / `c_anchor`. With finetune.adversarial
        the inner attack runs first at every `every`-th step and a share of the rows carry its
        conditions in `c_in` (trust/methods/adversarial.py); otherwise c_in is c_target."""
        if self.adversary is None:
            x_t, t, c_target, c_anchor, _ = self.data.batch(self.parts, self.ft.batch_size, self.ft.seed, step, 1)
            return x_t, t, c_target, c_target, c_anchor
        self.adversary.refresh(step, info)
        return self.adversary.batch(step)

    def forget_target(self, x_t, t, c_target, c_anchor) -> torch.Tensor:
        """sg[eps*(x_t,t,c_anchor)] or ESD's negative-guidance target (finetune.forget_target)."""
        with torch.no_grad():
            if self.cfg.forget_target == "anchor":
                return self.frozen(x_t, t, encoder_hidden_states=c_anchor).sample
            if self.cfg.forget_target == "anchor_negative":
                return self.negative_guidance(x_t, t, c_target, base=c_anchor)
            return self.negative_guidance(x_t, t, c_target)

    def negative_guidance(self, x_t, t, c_target, base=None) -> torch.Tensor:
        """ESD's target, away from `c_target` starting at the empty prompt's prediction (or at `base`'s)."""
        base = self.uncond.expand_as(c_target) if base is None else base
        with torch.no_grad():
            both = self.frozen(torch.cat([x_t, x_t]), torch.cat([t, t]),
                               encoder_hidden_states=torch.cat([base, c_target])).sample
            e_u, e_c = both.chunk(2)
            return negative_guidance_target(e_u, e_c, self.cfg.eta)

    def preserve_loss(self, step: int) -> torch.Tensor:
        """Optional preservation term: preservation prompts keep the frozen model's noise prediction.
        With `keep_pool` (TRUST's target_pool) most rows and their targets come from the pool."""

        def compute(n: int):
            idx, (k_t, k_tt, k_c, _, _) = self.keep.batch_rows(self.parts, n, self.ft.seed, step, 3)
            with torch.no_grad():
                return k_t, k_tt, idx, self.frozen(k_t, k_tt, encoder_hidden_states=k_c).sample

        bs = self.ft.batch_size
        k_t, k_tt, idx, k_target = self.keep_pool.rows(step, bs, compute) if self.keep_pool else compute(bs)
        k_c = self.keep.target_emb[idx]
        return forget_loss(self.parts.unet(k_t, k_tt, encoder_hidden_states=k_c).sample, k_target)

    def with_preservation(self, loss: torch.Tensor, step: int, info: dict) -> torch.Tensor:
        # Several concepts in one batch (batch_size rows of each): the forget term is the sum of each
        # concept's mean, so a row that only one concept uses weighs its forget loss against the
        # preservation term as a one-concept run does (the batch mean divided it by the number of
        # concepts: 120 joint steps left 7 of 8 pairs at 0.94-1.00, bench/results/multi_concept.md)
        loss = loss * self.data.concepts
        if self.ft.preserve_weight > 0:
            l_keep = self.preserve_loss(step)
            info["l_keep"] = l_keep.item()
            loss = loss + self.ft.preserve_weight * l_keep
        if self.prior is not None:
            w = self.ft.prior.weight
            if self.prior_opt is None:
                l_prior = self.prior_loss(step)
            else:
                # the other UNet weights take part in the replay forward only: the forget and preservation
                # terms never reach them (whole-UNet forget terms took the kept shapes: full-prior, robust.md)
                others = list(self.prior_params.values())
                for p in others:
                    p.requires_grad_(True)
                try:
                    l_prior = self.prior_loss(step)
                    self._prior_grads = torch.autograd.grad(w * l_prior, others, retain_graph=True)
                finally:
                    for p in others:
                        p.requires_grad_(False)
            info["l_prior"] = l_prior.item()
            loss = loss + w * l_prior  # the method's own parameters learn from it too
        return loss

    def prior_loss(self, step: int) -> torch.Tensor:
        """Concept-free replay: the denoising loss on images without the concept under captions that leave
        it open (trust/methods/prior.py)."""
        x_t, t, c, noise = self.prior.batch(self.parts, self.ft.prior.batch_size, self.ft.seed, step, STREAM)
        return forget_loss(self.parts.unet(x_t, t, encoder_hidden_states=c).sample, noise)

    def update(self, loss: torch.Tensor) -> None:
        """Backward, Adam step of the entries in `self.mask` only."""
        self.opt.zero_grad(set_to_none=True)
        self.loss_scale.backward_and_step(
            loss, self.opt, {p: expand_mask(self.mask[k], p) for k, p in self.params.items() if k in self.mask})
        if self._prior_grads is not None:  # finetune.prior.modules: unet: the replay term's gradient alone
            for p, g in zip(self.prior_params.values(), self._prior_grads):
                p.grad = g
            self.prior_opt.step()
            self.prior_opt.zero_grad(set_to_none=True)
            self._prior_grads = None

    def mask_info(self) -> dict:
        return {"mask_size": mask_size(self.mask)} if self.mask else {}

    # -- checkpointing (safetensors-friendly flat tensors) ---------------------------
    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, t: dict[str, torch.Tensor]) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for k, p in self.params.items():
            out[f"param.{k}"] = p.detach()
            st = self.opt.state.get(p) if self.opt else None
            if st:
                out[f"adam.{k}.exp_avg"], out[f"adam.{k}.exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
                out[f"adam.{k}.step"] = st["step"]  # per entry: its own steps inside the mask
        for k, m in self.mask.items():
            out[f"mask.{k}"] = m
        out.update(self.extra_state())
        out.update(self.loss_scale.state())
        if self.adversary is not None:
            out.update(self.adversary.pool.state())
        for k, p in self.prior_params.items():  # finetune.prior.modules: unet
            out[f"prior.param.{k}"] = p.detach()
            st = self.prior_opt.state.get(p)
            if st:
                out[f"prior.adam.{k}.exp_avg"], out[f"prior.adam.{k}.exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
                out[f"prior.adam.{k}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
        return out

    def load_state_tensors(self, t: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(t[f"param.{k}"])
                if f"adam.{k}.exp_avg" in t:
                    # (a checkpoint from before per-entry counts holds one count for the whole tensor)
                    self.opt.state[p] = {"step": t[f"adam.{k}.step"].expand_as(p).clone(),
                                         "exp_avg": t[f"adam.{k}.exp_avg"].clone(),
                                         "exp_avg_sq": t[f"adam.{k}.exp_avg_sq"].clone()}
            self.mask = {k.removeprefix("mask."): v.clone() for k, v in t.items() if k.startswith("mask.")} or self.mask
        with torch.no_grad():
            for k, p in self.prior_params.items():
                p.copy_(t[f"prior.param.{k}"])
                if f"prior.adam.{k}.exp_avg" in t:
                    self.prior_opt.state[p] = {"step": t[f"prior.adam.{k}.step"].reshape(()).clone(),
                                               "exp_avg": t[f"prior.adam.{k}.exp_avg"].clone(),
                                               "exp_avg_sq": t[f"prior.adam.{k}.exp_avg_sq"].clone()}
        self.load_extra_state(t)
        self.loss_scale.load(t)
        if self.adversary is not None:
            self.adversary.pool.load(t)
