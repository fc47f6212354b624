"""Token-level helpers shared by the optimisation attacks.

* `candidate_tokens`: the vocabulary an attack may pick from — whole-word tokens that a
  tokenizer maps back to themselves, so a found prompt survives decode -> encode and can
  be re-used as plain text (re-erasure, reports).
* `Layout`: a prompt's token ids with learnable slots (prefix, alone, or inserted).
* `encode_with_embeddings`: the text encoder's hidden states from token *embeddings*
  (relaxed one-hot mixtures, continuous vectors), via a hook on the input embedding layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from trust.models.parts import DiffusionParts

_CANDIDATES: dict[int, torch.Tensor] = {}


def candidate_tokens(tokenizer, exclude: tuple[str, ...] = ()) -> torch.Tensor:
    """Ids of whole-word alphabetic tokens (>= 2 letters) that round-trip through the tokenizer."""
    key = (id(tokenizer), exclude)
    if key in _CANDIDATES:
        return _CANDIDATES[key]
    special = set(tokenizer.all_special_ids)
    ids = []
    for tok, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if i in special or not tok.endswith("</w>"):
            continue
        word = tok[: -len("</w>")]
        if len(word) < 2 or not word.isalpha() or not word.isascii() or word in exclude:
            continue
        if tokenizer(word, add_special_tokens=False).input_ids == [i]:
            ids.append(i)
    if not ids:
        raise ValueError("the tokenizer has no whole-word tokens an attack could use")
    _CANDIDATES[key] = out = torch.tensor(ids)
    return out


def token_embeddings(parts: DiffusionParts) -> torch.Tensor:
    return parts.text_encoder.get_input_embeddings().weight


@contextlib.contextmanager
def _replace_token_embeddings(parts: DiffusionParts, embeds: torch.Tensor):
    layer = parts.text_encoder.get_input_embeddings()
    handle = layer.register_forward_hook(lambda mod, inp, out: embeds.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


def encode_with_embeddings(parts: DiffusionParts, ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """Hidden states for token ids (B, L) whose input embeddings are replaced by `embeds` (B, L, D).

    `ids` still matter: the encoder finds the end-of-text position (pooling) from them."""
    with _replace_token_embeddings(parts, embeds):
        return parts.text_encoder(ids.to(parts.text_encoder.device))[0]


@dataclass
class Layout:
    """Token ids (L,) of one prompt, padded to the model length, with learnable slot positions."""

    ids: torch.Tensor
    slots: torch.Tensor  # positions in `ids` the attack fills
    tokenizer: object

    @classmethod
    def build(cls, tokenizer, prompt: str, n_slots: int, mode: str = "prefix", every: int = 0) -> "Layout":
        """mode: 'prefix' (slots then prompt), 'alone' (slots only), 'insert' (a slot after every
        `every` prompt tokens, n_slots at most)."""
        content = tokenizer(prompt, add_special_tokens=False).input_ids if mode != "alone" else []
        room = tokenizer.model_max_length - 2
        seq: list[int] = []
        if mode in ("prefix", "alone"):
            seq = [-1] * n_slots + content
        elif mode == "insert":
            if every < 1:
                raise ValueError("insert mode needs every >= 1")
            placed = 0
            for j, tok in enumerate(content):
                seq.append(tok)
                if (j + 1) % every == 0 and placed < n_slots:
                    seq.append(-1)
                    placed += 1
            seq += [-1] * (n_slots - placed)
        else:
            raise ValueError(f"unknown layout mode {mode!r}")
        if seq.count(-1) > room:
            raise ValueError(f"{n_slots} adversarial tokens do not fit the tokenizer's {tokenizer.model_max_length} tokens")
        seq = seq[:room]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        full = [tokenizer.bos_token_id] + seq + [tokenizer.eos_token_id]
        full += [pad] * (tokenizer.model_max_length - len(full))
        ids = torch.tensor(full)
        slots = (ids == -1).nonzero().flatten()
        ids[slots] = tokenizer.eos_token_id  # placeholder, never read (embeddings replace it)
        return cls(ids, slots, tokenizer)

    def fill(self, slot_ids: torch.Tensor) -> torch.Tensor:
        """Hard ids with the slots filled: (..., n_slots) -> (..., L)."""
        ids = self.ids.expand(*slot_ids.shape[:-1], -1).clone()
        ids[..., self.slots] = slot_ids.to(ids.dtype)
        return ids

    def text(self, slot_ids: torch.Tensor) -> str:
        return self.tokenizer.decode(self.fill(slot_ids).tolist(), skip_special_tokens=True).strip()

    def embed(self, parts: DiffusionParts, slot_embeds: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, L, D) with the slots taken from slot_embeds (B, n_slots, D)."""
        base = token_embeddings(parts)[self.ids.to(token_embeddings(parts).device)]
        base = base.expand(slot_embeds.shape[0], -1, -1).clone()
        base[:, self.slots] = slot_embeds
        return base

    def encode(self, parts: DiffusionParts, slot_embeds: torch.Tensor) -> torch.Tensor:
        ids = self.ids.expand(slot_embeds.shape[0], -1)
        return encode_with_embeddings(parts, ids, self.embed(parts, slot_embeds))


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (Duchi et al. 2008)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    cond = (u - css / k) > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def noise_target(parts: DiffusionParts, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = parts.scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return parts.scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"prediction_type {kind!r} is not supported by the attacks (epsilon or v_prediction)")
