"""Adversarial erasure: an inner attack against the current weights, inside the training loop.

Design (docs/methods.md, Adversarial erasure), from the field's anchors:
- AdvUnlearn: min-max training: an inner attack on the model being erased finds conditions that
  bring the concept back, and the erasure loss is applied to them (its "fast" attacker: a few
  steps on prefix tokens of the concept prompt, warm-started across steps).
- UnlearnDiffAtk / P4D: what the inner attack optimises. `objective: p4d` matches the current
  model's noise prediction under the adversarial prompt to the ORIGINAL model's for the clean
  prompt (the concept as the base model draws it); `denoise` is UnlearnDiffAtk's: the current
  model's own denoising loss on the prompt's reference image.
- RECE / STEREO: the conditions found are kept and reused (a pool), so the erasure is pushed on
  everything that broke through recently, not only on the newest find.

Every `every` steps, `prompts` training prompts (reference image, clean condition) are attacked
together: `tokens` adversarial tokens, before the prompt (`layout: prefix`, UnlearnDiffAtk's) or as the
whole prompt (`alone`, P4D-N's: the objective still targets the clean prompt's prediction), or half
of the prompts each (`both`); either hard tokens (`space: tokens`: P4D's projected embeddings,
the best hard prompt kept: a prompt a user could type) or free word embeddings (`space:
embedding`, AdvUnlearn's soft prompt). The resulting text-encoder conditions join a pool (newest `pool_size`); each forget
batch then gets round(`share` x batch_size) extra rows from the pool: the row's reference image and anchor are
those of the prompt that was attacked, and the trained model sees the adversarial condition
where it would have seen the clean one, while the training target is computed from the clean
prompt / anchor as usual. The preservation term is untouched.

The attack takes gradients with `torch.autograd.grad` with respect to its own variables only: the
trained weights' `.grad` is never touched. All randomness is keyed by the step number, and the
pool is part of the checkpoint, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from trust.attacks.text import Layout, candidate_tokens, encode_with_embeddings, noise_target, token_embeddings
from trust.models.parts import DiffusionParts
from trust.utils.seeding import torch_generator


@dataclass
class Found:
    """What one inner attack found: a condition per attacked prompt."""

    cond: torch.Tensor  # (P, L, D) text-encoder output of the adversarial prompts
    texts: list[str | None]  # the hard prompts (space: tokens); None for free embeddings
    objective_start: float  # the attack objective on a fixed batch, at the start and at the end
    objective_end: float
    seconds: float = 0.0


class InnerAttack:
    """Prefix tokens that bring the concept back for a batch of prompts, against given weights."""

    def __init__(self, parts: DiffusionParts, frozen_unet, cfg, kept_words: tuple[str, ...] = ()):
        self.parts, self.frozen, self.cfg = parts, frozen_unet, cfg
        cand = candidate_tokens(parts.tokenizer)
        if cfg.protect_kept_words and kept_words:
            cand = cand[[not _piece_of(t, kept_words) for t in parts.tokenizer.convert_ids_to_tokens(cand.tolist())]]
        self.cand = cand
        self.E = token_embeddings(parts)[self.cand.to(token_embeddings(parts).device)].detach()

    def modes(self, n: int) -> list[str]:
        """The layout of each of n attacked prompts (`layout: both`: the second half alone)."""
        if self.cfg.layout != "both":
            return [self.cfg.layout] * n
        return ["prefix" if i < (n + 1) // 2 else "alone" for i in range(n)]

    def layouts(self, prompts: list[str]) -> tuple[list[Layout], torch.Tensor, torch.Tensor]:
        lays = [Layout.build(self.parts.tokenizer, p, self.cfg.tokens, mode)
                for p, mode in zip(prompts, self.modes(len(prompts)))]
        slots = lays[0].slots
        if any(not torch.equal(lay.slots, slots) for lay in lays):  # prefix and alone slots both sit right after BOS
            raise ValueError("adversarial slots differ between prompts")
        return lays, torch.stack([lay.ids for lay in lays]), slots

    def encode(self, ids: torch.Tensor, slots: torch.Tensor, slot_embeds: torch.Tensor) -> torch.Tensor:
        base = token_embeddings(self.parts)[ids.to(self.E.device)].clone()
        base[:, slots] = slot_embeds.to(base.dtype)
        return encode_with_embeddings(self.parts, ids, base)

    def _targets(self, x0: torch.Tensor, c_clean: torch.Tensor, g: torch.Generator):
        """A batch of (x_t, t, what the attacked model should predict) for each prompt x timesteps."""
        n = self.cfg.timesteps
        P = x0.shape[0]
        x0r = x0.repeat_interleave(n, 0)
        noise = torch.randn(x0r.shape, generator=g).to(x0.device)
        t = torch.randint(0, self.parts.scheduler.config.num_train_timesteps, (P * n,), generator=g).to(x0.device)
        x_t = self.parts.scheduler.add_noise(x0r, noise, t)
        with torch.no_grad():
            if self.cfg.objective == "p4d":
                want = self.frozen(x_t, t, encoder_hidden_states=c_clean.repeat_interleave(n, 0)).sample
            else:
                want = noise_target(self.parts, x0r, noise, t)
        return x_t, t, want

    def _loss(self, unet, batch, cond: torch.Tensor) -> torch.Tensor:
        x_t, t, want = batch
        eps = unet(x_t, t, encoder_hidden_states=cond.repeat_interleave(self.cfg.timesteps, 0)).sample
        return ((eps - want) ** 2).mean()

    def run(self, unet, x0: torch.Tensor, prompts: list[str], c_clean: torch.Tensor, *key: int) -> Found:
        """Attack `prompts` (reference latents `x0` (P, C, h, w), clean conditions `c_clean`) on `unet`
        for `cfg.steps` steps; the randomness is a function of `key` alone.

        `space: tokens` follows P4D (PEZ): continuous vectors whose forward pass uses their nearest
        candidate tokens, gradients passed straight through, and the hard prompt with the lowest
        objective so far is kept (a relaxed one-hot moved too little in a 10-step budget to change
        its argmax on the world's vocabulary). `space: embedding` keeps the free vectors."""
        from trust.attacks.p4d import nearest

        t0 = time.perf_counter()
        cfg, E = self.cfg, self.E
        g = torch_generator(*key)
        lays, ids, slots = self.layouts(prompts)
        P = len(prompts)
        z = E[torch.randint(len(self.cand), (P, cfg.tokens), generator=g).to(E.device)].clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=cfg.lr)
        fixed = self._targets(x0, c_clean, torch_generator(*key, 1))  # the objective is reported (and, for
        # hard tokens, the best prompt chosen) on one fixed batch

        def per_prompt(cond: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                x_t, t, want = fixed
                eps = unet(x_t, t, encoder_hidden_states=cond.repeat_interleave(cfg.timesteps, 0)).sample
                return ((eps - want) ** 2).flatten(1).mean(1).view(P, cfg.timesteps).mean(1)

        hard = lambda v: E[nearest(v.detach().reshape(-1, v.shape[-1]), E)].view_as(v)  # noqa: E731
        best_embeds = hard(z) if cfg.space == "tokens" else z.detach().clone()
        best = per_prompt(self.encode(ids, slots, best_embeds))
        start = float(best.mean())
        for _ in range(cfg.steps):
            forward = z + (hard(z) - z).detach() if cfg.space == "tokens" else z
            loss = self._loss(unet, self._targets(x0, c_clean, g), self.encode(ids, slots, forward))
            (grad,) = torch.autograd.grad(loss, [z])  # the trained weights' .grad stays untouched
            z.grad = grad
            opt.step()
            now_embeds = hard(z) if cfg.space == "tokens" else z.detach().clone()
            now = per_prompt(self.encode(ids, slots, now_embeds))
            better = now < best
            best = torch.where(better, now, best)
            best_embeds[better] = now_embeds[better]
        with torch.no_grad():
            cond = self.encode(ids, slots, best_embeds)
        if cfg.space == "tokens":
            tok = nearest(best_embeds.reshape(-1, E.shape[-1]), E).view(P, cfg.tokens).cpu()
            texts = [lay.text(self.cand[tok[i]]) for i, lay in enumerate(lays)]
        else:
            texts = [None] * P
        return Found(cond.detach(), texts, start, float(best.mean()), time.perf_counter() - t0)


@dataclass
class Pool:
    """The newest `size` adversarial conditions and the reference row each was found for."""

    size: int
    cond: torch.Tensor | None = None  # (N, L, D)
    idx: torch.Tensor | None = None  # (N,) reference rows of ForgetData

    def __len__(self) -> int:
        return 0 if self.idx is None else len(self.idx)

    def add(self, cond: torch.Tensor, idx: torch.Tensor) -> None:
        self.cond = cond if self.cond is None else torch.cat([self.cond, cond])[-self.size:]
        self.idx = idx.clone() if self.idx is None else torch.cat([self.idx, idx])[-self.size:]

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.idx is None else {"adversarial.cond": self.cond, "adversarial.idx": self.idx}

    def load(self, t: dict[str, torch.Tensor]) -> None:
        if "adversarial.idx" in t:
            self.cond, self.idx = t["adversarial.cond"].clone(), t["adversarial.idx"].clone()


class Adversary:
    """A method's adversarial side (finetune.adversarial): the inner attack every `every` steps, and
    the forget batch's rows drawn from the pool."""

    def __init__(self, method):
        self.method, self.cfg = method, method.ft.adversarial
        self.attack = InnerAttack(method.parts, method.frozen, self.cfg, kept_words(method))
        self.pool = Pool(self.cfg.pool_size)

    def refresh(self, step: int, info: dict) -> None:
        """At every `every`-th step: attack the current weights on `prompts` training prompts."""
        if step % self.cfg.every:
            return
        m, data = self.method, self.method.data
        g = torch_generator(m.ft.seed, step, 7)
        idx = torch.randperm(len(data), generator=g)[: self.cfg.prompts]
        found = self.attack.run(m.parts.unet, data.latents[idx], [data.prompts[i] for i in idx.tolist()],
                                data.target_emb[idx], m.ft.seed, step, 8)
        self.pool.add(found.cond, idx)
        info.update({"adv_s": found.seconds, "adv_obj_start": found.objective_start,
                     "adv_obj_end": found.objective_end, "adv_pool": float(len(self.pool))})
        if found.texts and found.texts[0] is not None:
            info["adv_prompt"] = found.texts[0]

    def rows(self, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(reference rows, the pool conditions of the extra rows or None): `size` rows drawn uniformly
        as without the option, then n = round(share * size) more from the pool (they join the batch:
        the clean rows' progress is not traded for robustness)."""
        clean = torch.randint(0, len(self.method.data), (size,), generator=g)
        n = max(1, round(self.cfg.share * size)) if len(self.pool) else 0
        if not n:
            return clean, None
        j = torch.randint(0, len(self.pool), (n,), generator=g)
        return torch.cat([clean, self.pool.idx[j]]), self.pool.cond[j]

    def batch(self, step: int):
        """The forget batch of `step`: (x_t, t, condition the trained model sees, clean condition, anchor)."""
        m = self.method
        g = torch_generator(m.ft.seed, step, 1)
        idx, adv = self.rows(m.ft.batch_size, g)
        x_t, t, c_target, c_anchor, _ = m.data._noised(m.parts, idx, g)
        return x_t, t, with_rows(c_target, adv), c_target, c_anchor


def _piece_of(token: str, words: tuple[str, ...]) -> bool:
    """A candidate token (`riangle</w>`) that is a kept word or the end of one (a word piece of 3+ letters)."""
    t = token.removesuffix("</w>").lower()
    return any(w == t or (len(t) >= 3 and w.endswith(t)) for w in words)


def kept_words(method) -> tuple[str, ...]:
    return method.resources.kept_words if method.resources is not None else ()


def with_rows(c: torch.Tensor, adv: torch.Tensor | None) -> torch.Tensor:
    """`c` with its last rows replaced by `adv` (the adversarial conditions)."""
    if adv is None:
        return c
    out = c.clone()
    out[len(c) - len(adv):] = adv.to(out.dtype)
    return out


class ValAttack:
    """The bar's attacked target rate (finetune.adversarial.check): the validation target prompts,
    attacked afresh against the current weights at every check with the inner attack's settings."""

    def __init__(self, method, prompts: list[str], seed: int):
        from trust.methods.data import ForgetData

        self.method, self.prompts, self.seed = method, prompts, seed
        self.attack = InnerAttack(method.parts, method.frozen, method.ft.adversarial, kept_words(method))
        rows = [{"prompt": p, "anchor": ""} for p in prompts]
        self.data = ForgetData.build(method.parts, rows, None, seed + 2)  # the starting model's images

    def conditions(self, done: int) -> Found:
        return self.attack.run(self.method.parts.unet, self.data.latents, self.prompts, self.data.target_emb,
                               self.seed, done, 9)
