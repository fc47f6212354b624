"""UCE (Gandikota et al., "Unified Concept Editing in Diffusion Models", 2024): training-free.

Every cross-attention key/value projection W (attn2.to_k, attn2.to_v; `projections`) is replaced
by the solution of

    min_W  erase_scale    sum_i ||W c_i - W_old a_i||^2          (erased rows)
         + preserve_scale sum_j ||W c_j - W_old c_j||^2          (preserved rows)
         + lamb ||W - W_old||_F^2

    W = (erase_scale sum_i W_old a_i c_i^T + preserve_scale sum_j W_old c_j c_j^T + lamb W_old)
        (erase_scale sum_i c_i c_i^T      + preserve_scale sum_j c_j c_j^T      + lamb I)^-1

Rows are text-encoder states (the UNet's cross-attention context) at single positions:
- erased: each distinct (target prompt, anchor) pair of the forget data; c_i the target's state at
  a position p, a_i the anchor's state at the position aligned with it. UCE's code aligns the two
  prompts at their ends (its prompts are the bare concept); here the prompts are whole captions,
  so the alignment is right-to-left from the end-of-text token, q = p + (eos_anchor - eos_target),
  clamped to the first position where the two token sequences differ: the concept's words map
  onto the anchor's first words of its own ("a red circle on a plain background" -> "a plain
  background": red, circle, on, a -> plain; plain -> plain; background -> background; EOS and
  padding -> EOS and padding). `positions: concept` erases from that first differing position to
  the end (the causal text encoder carries the concept into every later position; the padding is
  read by the cross-attention too), `all` from position 1 (everything but BOS).
- preserved: every position of each distinct preservation prompt (concept.preserve's train split).
All of it happens in the first `step`, in float64; later steps change nothing (`finished`).
"""

from __future__ import annotations

import torch

from trust.methods.ant_fusion.lora import token_embeddings
from trust.methods.base import Method

PROJECTIONS = {"kv": (".attn2.to_k.weight", ".attn2.to_v.weight"), "v": (".attn2.to_v.weight",)}


def projection_weights(unet, which: str) -> dict[str, torch.nn.Parameter]:
    """The cross-attention projection weights that the edit replaces, by UNet parameter name."""
    out = {k: p for k, p in unet.named_parameters() if k.endswith(PROJECTIONS[which])}
    if not out:
        raise ValueError("uce/rece: the UNet has no cross-attention projections (attn2.to_k / attn2.to_v)")
    return out


def aligned_positions(target_ids: list[int], anchor_ids: list[int], eos_target: int, eos_anchor: int,
                      positions: str) -> list[tuple[int, int]]:
    """(target position, anchor position) pairs of one erased prompt (module docstring): from the
    first differing position (`concept`) or from 1 (`all`) to the end, right-aligned at EOS."""
    n = len(target_ids)
    first = next((i for i, (a, b) in enumerate(zip(target_ids, anchor_ids)) if a != b), None)
    if first is None:  # the anchor is the target: nothing to erase
        return []
    start = first if positions == "concept" else 1
    lo = min(first, eos_anchor)
    return [(p, min(max(p + eos_anchor - eos_target, lo), n - 1)) for p in range(start, n)]


@torch.no_grad()
def encode(parts, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(states (n, L, D) float64 on CPU, token ids (n, L))."""
    ids = parts.tokenize(prompts)
    states = parts.text_encoder(ids)[0]
    return states.double().cpu(), ids.cpu()


def _eos(ids: torch.Tensor, tokenizer) -> int:
    eos = tokenizer.eos_token_id
    hits = (ids == eos).nonzero()
    return int(hits[0]) if len(hits) else len(ids) - 1


@torch.no_grad()
def erase_rows(parts, pairs: list[tuple[str, str]], positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, A): the target states c_i and their anchors' aligned states a_i, one row per erased position."""
    if not pairs:
        raise ValueError("uce/rece: no target prompts to erase (the prompts stage's target.train)")
    t_states, t_ids = encode(parts, [p for p, _ in pairs])
    a_states, a_ids = encode(parts, [a for _, a in pairs])
    c_rows, a_rows = [], []
    for i in range(len(pairs)):
        idx = aligned_positions(t_ids[i].tolist(), a_ids[i].tolist(), _eos(t_ids[i], parts.tokenizer),
                                _eos(a_ids[i], parts.tokenizer), positions)
        if idx:
            c_rows.append(t_states[i, [p for p, _ in idx]])
            a_rows.append(a_states[i, [q for _, q in idx]])
    if not c_rows:
        raise ValueError("uce/rece: every target prompt equals its anchor: nothing to erase (concept.anchor)")
    return torch.cat(c_rows), torch.cat(a_rows)


def preserve_rows(parts, prompts: list[str]) -> torch.Tensor:
    """Every position's state of each preservation prompt, float64 (ANT+fusion's `all` positions)."""
    return token_embeddings(parts, prompts, "all").double()


def solve_edit(w_old: torch.Tensor, c: torch.Tensor, v: torch.Tensor, p: torch.Tensor, erase_scale: float,
               preserve_scale: float, lamb: float) -> torch.Tensor:
    """The UCE normal equations for one projection (module docstring): c (n, D) erased states, v (n, out)
    their target outputs, p (m, D) preserved states; float64 in, float64 out."""
    d = w_old.shape[1]
    lhs = lamb * torch.eye(d, dtype=torch.float64) + erase_scale * c.T @ c
    rhs = lamb * w_old + erase_scale * v.T @ c
    if preserve_scale > 0 and p.numel():
        pp = p.T @ p
        lhs = lhs + preserve_scale * pp
        rhs = rhs + preserve_scale * w_old @ pp
    return torch.linalg.solve(lhs, rhs.T).T  # lhs symmetric: W lhs = rhs <=> lhs W^T = rhs^T


class UceMethod(Method):
    name = "uce"
    needs_frozen = False

    @classmethod
    def needs_keep(cls, ft) -> bool:
        return ft.method.preserve_scale > 0

    def keep_reason(self) -> str:
        return f"finetune.method.preserve_scale={self.cfg.preserve_scale} > 0"

    def select_parameters(self):
        return {}  # training-free: nothing gets a gradient

    def setup(self, initial_mask):
        self.layers = projection_weights(self.parts.unet, self.cfg.projections)
        self.original = {k: p.detach().double().cpu().clone() for k, p in self.layers.items()}

    def trainable_parameters(self) -> int:
        return 0

    # -- the edit -------------------------------------------------------------------
    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if len(self.data.anchors) != len(self.data.prompts):
            raise ValueError("uce/rece: the forget data carries no anchor prompts (build it with ForgetData.build)")
        pairs = list(dict.fromkeys(zip(self.data.prompts, self.data.anchors)))
        c, a = erase_rows(self.parts, pairs, self.cfg.positions)
        keep = list(dict.fromkeys(self.keep.prompts)) if self.keep is not None else []
        return c, a, preserve_rows(self.parts, keep)

    def solve(self, c: torch.Tensor, a: torch.Tensor, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every projection's edited weight for erased states c (targets: the original projection of a)."""
        cfg = self.cfg
        return {k: solve_edit(w, c, a @ w.T, p, cfg.erase_scale, cfg.preserve_scale, cfg.lamb)
                for k, w in self.original.items()}

    def write(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, w in weights.items():
                self.layers[k].copy_(w.to(self.layers[k].dtype))

    def residuals(self, weights, c, a, p) -> dict:
        """How far the erased rows still are from their targets, relative to before the edit, and how
        much the preserved rows moved, relative to their size (1.0 / 0.0: no edit)."""
        num = den = moved = size = 0.0
        for k, w_old in self.original.items():
            w, target = weights[k], a @ w_old.T
            num += float(((c @ w.T - target) ** 2).sum())
            den += float(((c @ w_old.T - target) ** 2).sum())
            if p.numel():
                moved += float(((p @ (w - w_old).T) ** 2).sum())
                size += float(((p @ w_old.T) ** 2).sum())
        return {"erase_residual": (num / den) ** 0.5 if den else 0.0,
                "preserve_change": (moved / size) ** 0.5 if size else 0.0}

    def edit(self) -> dict:
        c, a, p = self.rows()
        weights = self.solve(c, a, p)
        self.write(weights)
        return {"erase_rows": len(c), "preserve_rows": len(p), **self.residuals(weights, c, a, p)}

    def step(self, step: int) -> dict:
        if self.finished:
            return dict(self.info)
        # the closed form reads text-encoder states and solves in float64: never under model.dtype's autocast
        with torch.autocast(self.parts.unet.device.type, enabled=False):
            self.info = self.edit()
        self.finished = True
        return dict(self.info)

    # -- resume -----------------------------------------------------------------------
    def extra_state(self):
        out = {f"{self.name}.finished": torch.tensor([int(self.finished)])}
        if self.finished:
            out.update({f"{self.name}.weight.{k}": p.detach() for k, p in self.layers.items()})
        return out

    def load_extra_state(self, t):
        self.finished = bool(int(t[f"{self.name}.finished"][0]))
        self.info = {}
        if self.finished:
            with torch.no_grad():
                for k, p in self.layers.items():
                    p.copy_(t[f"{self.name}.weight.{k}"])
