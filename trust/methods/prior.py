"""Concept-free replay (finetune.prior): the data without the concept, under captions that leave it open.

Why: an erasure trained on the concept's prompts removes the *words'* route to the concept, not the
model's prior. On the world, prompts that name no shape ("a red shape", "", "object object object")
draw circles at the base model's rate (0.12-0.42 of images) before and after erasure, and the attacks
win by finding such prompts (bench/results/robust.md: the null attack breaks 10 of 22 prompts on the
*base* model). Retraining without the concept, the unlearning gold standard, changes that prior:
fine-tuning on images without circles under concept-free captions took 7 of 8 generic prompts (4 of them forms it was not trained on)
to <= 0.04 circles (bench/results/tries/robust_tuning.md, session of 2026-12-07).

What: the frozen model's own images of the preservation prompts (it draws the kept concepts well), each
row captioned at every step with one of its true captions under which the concept stays possible
(`trust.concepts.neighbours.free_captions`: "a red shape" for a red square when erasing the circle) or,
with probability `empty_share`, the empty prompt; the term is the plain denoising loss
|| eps - eps_theta(x_t, t, caption) ||^2 on those images. It trains the method's own parameters (TRUST:
its masked rows) and joins every step through `Method.with_preservation`. All draws are keyed by the
step, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trust.models.parts import DiffusionParts
from trust.sampling import generate
from trust.utils.seeding import torch_generator

SEED_OFFSET = 2  # the replay images' seed: finetune.seed + 2 (targets + 0, preservation references + 1)
# a step's replay batch is keyed (finetune.seed, step, STREAM): a stream no other draw of a step uses (forget
# 1, saliency 2, preservation 3, ANT 5, adversarial 7 and 8)
STREAM = 9


@dataclass
class PriorData:
    latents: torch.Tensor  # (R, C, h, w): the frozen model's images of preservation prompts
    caption_emb: torch.Tensor  # (K, L, D): every distinct caption, the empty prompt last
    choices: list[list[int]]  # per image: indices into caption_emb of its concept-free captions
    captions: list[str]  # the K captions (the empty prompt last)
    sources: list[str]  # per image: the preservation prompt it was generated from
    empty_share: float = 0.25

    @classmethod
    @torch.no_grad()
    def build(cls, parts: DiffusionParts, rows: list[dict], detect: dict[str, str], empty_share: float,
              seed: int, references: int | None = None) -> "PriorData":
        """`rows`: prompts.json preservation rows ({prompt, labels}); one image per row that has a concept-free
        caption (or `references` images cycling over them), seeded with `seed` + SEED_OFFSET."""
        from trust.concepts.neighbours import free_captions

        if parts.scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError("finetune.prior: the replay term is an epsilon-prediction denoising loss, and this model "
                             f"predicts {parts.scheduler.config.prediction_type}")
        usable = [(r, free_captions(detect, r.get("labels") or {})) for r in rows]
        usable = [(r, caps) for r, caps in usable if caps]
        if not usable:
            raise ValueError("finetune.prior: no preservation prompt has a caption under which the concept stays "
                             f"possible (concept {detect}); add kept concepts (concept.keep) that share a head with "
                             "it, or set finetune.prior.enabled: false")
        n = references or len(usable)
        picked = [usable[i % len(usable)] for i in range(n)]
        sources = [r["prompt"] for r, _ in picked]
        images = generate(parts, sources, [(seed + SEED_OFFSET) * 100_003 + i for i in range(n)])
        captions = list(dict.fromkeys(c for _, caps in picked for c in caps)) + [""]
        index = {c: i for i, c in enumerate(captions)}
        return cls(latents=parts.encode_images(images), caption_emb=parts.encode_text(captions),
                   choices=[[index[c] for c in caps] for _, caps in picked], captions=captions, sources=sources,
                   empty_share=empty_share)

    def rows(self, size: int, g: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        """(image indices, caption indices) of one batch: images at random, each with one of its captions,
        or the empty prompt with probability `empty_share`."""
        idx = torch.randint(0, self.latents.shape[0], (size,), generator=g)
        empty = torch.rand(size, generator=g) < self.empty_share
        pick = torch.rand(size, generator=g)
        caps = []
        for i, e, u in zip(idx.tolist(), empty.tolist(), pick.tolist()):
            ch = self.choices[i]
            caps.append(len(self.captions) - 1 if e else ch[min(int(u * len(ch)), len(ch) - 1)])
        return idx, caps

    def batch(self, parts: DiffusionParts, size: int, *key: int):
        """(x_t, t, caption condition, noise) of batch `key`: a function of the key alone."""
        g = torch_generator(*key)
        idx, caps = self.rows(size, g)
        x0 = self.latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, parts.scheduler.config.num_train_timesteps, (size,), generator=g)
        return parts.scheduler.add_noise(x0, noise, t), t, self.caption_emb[caps], noise

    def __len__(self) -> int:
        return self.latents.shape[0]
