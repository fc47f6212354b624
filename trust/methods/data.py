"""Training data shared by the unlearning methods: reference images of the target concept,
made once by the frozen model, and the text conditions of each target prompt and its anchor."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from trust.models.parts import DiffusionParts
from trust.sampling import generate
from trust.utils.seeding import torch_generator


@dataclass
class ForgetData:
    latents: torch.Tensor  # (R, C, h, w) reference latents x0 of target prompts
    target_emb: torch.Tensor  # (R, L, D) condition of each reference's target prompt
    anchor_emb: torch.Tensor  # (R, L, D) condition of its anchor prompt
    prompts: list[str]
    anchors: list[str] = field(default_factory=list)  # each reference's anchor prompt (the closed-form edits read it)
    # each reference's concept (several concepts in one run, rows tagged "concept"); None: one concept.
    # With several, a batch of `size` draws `size` rows of *every* concept: each step trains each concept
    # as hard as a one-concept run would (a shared batch of 8 over 8 concepts left half of them at 0.97
    # after 560 steps, bench/results/multi_concept.md)
    strata: torch.Tensor | None = None

    @classmethod
    @torch.no_grad()
    def build(cls, parts: DiffusionParts, rows: list[dict], references: int | None, seed: int) -> "ForgetData":
        """`rows`: prompts.json target rows ({prompt, anchor}); `references` images cycle over them
        (None: one per row)."""
        if not rows:
            raise ValueError("no target prompts: run the prompts stage with a non-empty concept.target")
        references = references or len(rows)
        concepts = list(dict.fromkeys(r.get("concept") for r in rows))
        if len(concepts) > 1:  # several concepts: cycle over them in turn, so fewer references still cover each
            by = [[r for r in rows if r.get("concept") == c] for c in concepts]
            rows = [g[i] for i in range(max(map(len, by))) for g in by if i < len(g)]
        picked = [rows[i % len(rows)] for i in range(references)]
        prompts = [r["prompt"] for r in picked]
        images = generate(parts, prompts, [seed * 100_003 + i for i in range(references)])
        return cls(
            latents=parts.encode_images(images),
            target_emb=parts.encode_text(prompts),
            anchor_emb=parts.encode_text([r["anchor"] or "" for r in picked]),
            prompts=prompts,
            anchors=[r["anchor"] or "" for r in picked],
            strata=(torch.tensor([int(r["concept"]) for r in picked])
                    if len({r.get("concept") for r in picked}) > 1 else None),
        )

    def batch(self, parts: DiffusionParts, size: int, *key: int):
        """(x_t, t, target_emb, anchor_emb, noise) for batch `key`: a function of the key alone."""
        return self.batch_rows(parts, size, *key)[1]

    def batch_rows(self, parts: DiffusionParts, size: int, *key: int):
        """(reference indices, `batch`'s tuple): the same draw, with which references it took."""
        g = torch_generator(*key)
        idx = self.draw(size, g)
        return idx, self._noised(parts, idx, g)

    def draw(self, size: int, g: torch.Generator) -> torch.Tensor:
        """Reference indices of one batch: `size` at random, or with several concepts `size` of each."""
        if self.strata is None:
            return torch.randint(0, self.latents.shape[0], (size,), generator=g)
        groups = [torch.nonzero(self.strata == s).flatten() for s in torch.unique(self.strata)]
        return torch.cat([grp[torch.randint(0, len(grp), (size,), generator=g)] for grp in groups])

    @property
    def concepts(self) -> int:
        """How many concepts the references show (1 without strata)."""
        return 1 if self.strata is None else int(torch.unique(self.strata).numel())

    def batch_at(self, parts: DiffusionParts, idx: torch.Tensor, *key: int):
        """Like `batch`, for the given reference indices (e.g. a pass over all of them)."""
        return self._noised(parts, idx, torch_generator(*key))

    def _noised(self, parts: DiffusionParts, idx: torch.Tensor, g: torch.Generator):
        x0 = self.latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, parts.scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        x_t = parts.scheduler.add_noise(x0, noise, t)
        return x_t, t, self.target_emb[idx], self.anchor_emb[idx], noise

    def per_concept(self) -> list["ForgetData"]:
        """Each concept's references as data of their own (one concept: [self])."""
        if self.strata is None:
            return [self]
        out = []
        for s in torch.unique(self.strata):
            idx = torch.nonzero(self.strata == s).flatten()
            out.append(ForgetData(self.latents[idx], self.target_emb[idx], self.anchor_emb[idx],
                                  [self.prompts[i] for i in idx], [self.anchors[i] for i in idx] if self.anchors else []))
        return out

    def __len__(self) -> int:
        return self.latents.shape[0]


def preserve_data(parts: DiffusionParts, rows: list[dict], ft, references: int | None = None,
                  warn=None) -> ForgetData:
    """Preservation images of the frozen model for `rows` (prompts.json preserve rows).

    Count: `ft.preserve_references`, else `references` (a benchmark's override), else one per row. Images cycle over `rows` in order, so a smaller count leaves the later
    prompts out of the preservation term entirely: `warn` (default `warnings.warn`) says so.
    Seeded with `ft.seed + 1` (the target references use `ft.seed`).
    """
    n = ft.preserve_references or references or len(rows)
    if n < len(rows):
        (warn or warnings.warn)(f"finetune: {len(rows) - n} of {len(rows)} preservation training prompts are not "
                                f"used (finetune.preserve_references = {n}); set it to at least {len(rows)} to use "
                                "them all")
    return ForgetData.build(parts, rows, n, ft.seed + 1)
