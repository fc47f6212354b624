"""ANT multi-concept erasure (paper Eq. 7, MACE-style): one LoRA per concept, fused in closed form.

(a) `ConceptLora` (trained by `train_concept_lora`, method.py, through the one training loop): a LoRA (peft, rank `method.lora_rank`) on every cross-attention key/value
    projection (`attn2.to_k`, `attn2.to_v`) of a copy of the UNet, trained with the ANT loss
    (trust.methods.ant.ant_loss, same timestep convention) against the frozen original; returns
    Delta W = B A * alpha/r per layer, keyed by the UNet parameter name (`...attn2.to_k.weight`).
(b) `fuse_closed_form`: per layer,
        W* = argmin_W'  sum_i sum_j ||W' e_j - (W + Delta W_i) e_j||^2 + beta sum_k ||W' e_k - W e_k||^2
                        + lam ||W' - W||_F^2
    with e_j the text-encoder states of concept i's prompts and e_k those of the preservation prompts,
    at their real tokens (`method.fusion_positions: tokens`) or at every position the cross-attention
    reads, padding included (`all`).
    Normal equations:  W* A = B,  A = sum_i E_i^T E_i + beta E_p^T E_p + lam I,
                                  B = sum_i (W + Delta W_i) E_i^T E_i + beta W E_p^T E_p + lam W
    (E rows are embeddings). The ridge lam = method.fusion_ridge * mean(diag(A without ridge)) is
    tiny and only makes A invertible when the embeddings do not span the D dimensions; it pulls
    towards the base weights. Solved in float64. No concept: the base weights, unchanged.
    `method.fusion_overlap: sum`: a prompt of concept i that also shows concepts i2, i3 (by the caller's
    `shows`) has the target (W + Delta W_i + Delta W_i2 + Delta W_i3) e_j instead: its embedding sets
    are grouped by the deltas that apply (`applies`).
"""

from __future__ import annotations

import copy

import torch

from trust.config import FinetuneParams
from trust.methods.ant.method import ant_loss, draw_timesteps, split_timestep
from trust.methods.data import ForgetData
from trust.models.parts import DiffusionParts
from trust.utils.seeding import torch_generator

LORA_TARGETS = r".*attn2\.(to_k|to_v)$"


def kv_weight_names(unet) -> list[str]:
    """Parameter names of the cross-attention key/value projection weights."""
    return [k for k, _ in unet.named_parameters() if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k]


class ConceptLora:
    """One concept's LoRA (peft, rank `method.lora_rank`) on every attn2 to_k/to_v of a copy of `frozen`,
    trained step by step with the ANT loss against `frozen` (the frozen original, or for sequential
    erasure the model the concept is erased from). `loss(step)` is a function of (seed, step,
    concept_index) alone. With `keep` and `params.preserve_weight > 0` the project's optional
    preservation term (Method.preserve_loss: preservation prompts keep `frozen`'s noise prediction)
    is added, weighted by preserve_weight; off by default, as in the paper."""

    def __init__(self, frozen, scheduler, encode_text, data: ForgetData, params: FinetuneParams,
                 concept_index: int = 0, keep: ForgetData | None = None):
        from peft import LoraConfig, inject_adapter_in_model

        frozen.eval()
        frozen.requires_grad_(False)
        self.frozen, self.scheduler, self.data, self.params = frozen, scheduler, data, params
        self.concept_index, self.keep = concept_index, keep
        cfg = LoraConfig(r=params.method.lora_rank, lora_alpha=params.method.lora_alpha, target_modules=LORA_TARGETS,
                         lora_dropout=0.0, init_lora_weights=True)
        cuda = sorted({q.device.index or 0 for q in frozen.parameters() if q.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda):  # LoRA A's random init from (seed, concept), not the global RNG
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=torch_generator(params.seed, 9,
                                                                                           concept_index))))
            self.model = inject_adapter_in_model(cfg, copy.deepcopy(frozen))
        self.lora = {k: p for k, p in self.model.named_parameters() if "lora_" in k}
        with torch.no_grad():  # a frozen copy stored in model.dtype gives half-precision LoRA layers: train float32 masters
            for p in self.lora.values():
                p.data = p.data.float()
        if not self.lora:
            raise ValueError("the UNet has no attn2.to_k / attn2.to_v layers for the concept LoRA")
        for p in self.lora.values():
            p.requires_grad_(True)
        self.t_split = split_timestep(scheduler, params.method.split_step, params.method.ddim_steps)
        with torch.no_grad():
            self.uncond = encode_text([""])
        self.n_train = scheduler.config.num_train_timesteps

    def terms(self, step: int) -> dict[str, torch.Tensor]:
        params, data = self.params, self.data
        g = torch_generator(params.seed, step, 7, self.concept_index)
        idx = data.draw(params.batch_size, g)  # several concepts: batch_size rows of each
        x0 = data.latents[idx]
        n1, n2 = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)
        t1, t2 = draw_timesteps(g, self.t_split, self.n_train)
        terms = ant_loss(self.model, self.frozen, self.scheduler, x0, n1, n2, t1, t2, data.target_emb[idx],
                         self.uncond, params.method.eta, params.method.l1, params.method.l2, params.method.l3)
        terms["loss"] = terms["loss"] * data.concepts  # each concept's mean, summed (Method.with_preservation)
        if params.preserve_weight > 0 and self.keep is not None:
            g = torch_generator(params.seed, step, 8, self.concept_index)
            idx = torch.randint(0, len(self.keep), (params.batch_size,), generator=g)
            k0 = self.keep.latents[idx]
            noise = torch.randn(k0.shape, generator=g)
            kt = torch.randint(0, self.n_train, (len(idx),), generator=g)
            k_t, k_c = self.scheduler.add_noise(k0, noise, kt), self.keep.target_emb[idx]
            with torch.no_grad():
                want = self.frozen(k_t, kt, encoder_hidden_states=k_c).sample
            terms["l_keep"] = ((self.model(k_t, kt, encoder_hidden_states=k_c).sample - want) ** 2).mean()
            terms["loss"] = terms["loss"] + params.preserve_weight * terms["l_keep"]
        terms["t1"], terms["t2"] = torch.tensor(t1), torch.tensor(t2)
        return terms

    @torch.no_grad()
    def delta(self) -> dict[str, torch.Tensor]:
        """Delta W = B A * alpha/r per attn2 to_k/to_v weight, keyed by the UNet parameter name."""
        out = {}
        for name, module in self.model.named_modules():
            if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
                out[f"{name}.weight"] = module.get_delta_weight("default").detach().clone()
        return out


@torch.no_grad()
def token_embeddings(parts: DiffusionParts, prompts: list[str], positions: str = "tokens") -> torch.Tensor:
    """(n, D): the text encoder's states at the real tokens (BOS .. EOS, no padding) of each prompt
    (`positions="tokens"`), or at every position the UNet's cross-attention reads (`"all"`, padding included)."""
    if not prompts:
        return torch.zeros(0, parts.text_encoder.config.hidden_size)
    tok = parts.tokenizer(prompts, padding="max_length", max_length=parts.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")
    states = parts.text_encoder(tok.input_ids.to(parts.text_encoder.device))[0]
    if positions == "all":
        return states.reshape(-1, states.shape[-1]).float().cpu()
    if positions != "tokens":
        raise ValueError(f"positions must be 'tokens' or 'all', not {positions!r}")
    return states[tok.attention_mask.bool().to(states.device)].float().cpu()


def fuse_closed_form(base: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]],
                     concept_embs: list[torch.Tensor], preserve_embs: torch.Tensor | None,
                     beta: float, ridge: float, applies: list[tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """W* per layer of `base` (out, D) from Eq. 7's normal equations (see the module docstring).

    `applies[s]`: indices of the deltas whose sum is the target edit of embedding set s
    (default: set i takes delta i alone, one set per concept)."""
    if applies is None:
        if len(deltas) != len(concept_embs):
            raise ValueError(f"{len(deltas)} concept deltas but {len(concept_embs)} embedding sets")
        applies = [(i,) for i in range(len(deltas))]
    elif len(applies) != len(concept_embs) or any(not 0 <= i < len(deltas) for a in applies for i in a):
        raise ValueError("applies: one tuple of delta indices per embedding set")
    if not deltas:
        return {k: w.clone() for k, w in base.items()}
    out = {}
    for k, w in base.items():
        if not any(k in d for d in deltas):
            out[k] = w.clone()
            continue
        W = w.double()
        D = W.shape[1]
        A = torch.zeros(D, D, dtype=torch.float64)
        B = torch.zeros_like(W)
        for idx, e in zip(applies, concept_embs):
            e = e.double()
            ee = e.T @ e
            A += ee
            edit = sum((deltas[i].get(k, torch.zeros_like(w)).double() for i in idx), torch.zeros_like(W))
            B += (W + edit) @ ee
        if preserve_embs is not None and preserve_embs.numel():
            pp = preserve_embs.double().T @ preserve_embs.double()
            A += beta * pp
            B += beta * W @ pp
        scale = float(A.diagonal().mean()) or 1.0
        lam = ridge * scale
        A += lam * torch.eye(D, dtype=torch.float64)
        B += lam * W
        out[k] = torch.linalg.solve(A, B.T).T.to(w.dtype)  # A symmetric: W* A = B <=> A W*^T = B^T
    return out


def fuse_deltas(parts: DiffusionParts, base: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]],
                concepts: list[ForgetData], preserve_prompts: list[str],
                params: FinetuneParams, shows=None) -> dict[str, torch.Tensor]:
    """Eq. 7 for `deltas` (one per concept of `concepts`): e_j = token embeddings of each concept's
    distinct prompts, e_k those of `preserve_prompts`. With method.fusion_overlap `sum`, `shows(prompt)`
    (required then) gives the indices of the erased concepts a prompt shows."""
    pos = params.method.fusion_positions
    preserve = token_embeddings(parts, list(dict.fromkeys(preserve_prompts)), pos)
    if params.method.fusion_overlap == "own":
        concept_embs = [token_embeddings(parts, list(dict.fromkeys(d.prompts)), pos) for d in concepts]
        return fuse_closed_form(base, deltas, concept_embs, preserve, params.method.fusion_beta, params.method.fusion_ridge)
    if shows is None:
        raise ValueError("finetune.method.fusion_overlap=sum needs to know which erased concepts each prompt shows "
                         "(multi-concept fusion, bench/ant_multi.py); use `own` here")
    sets, applies = [], []
    for i, d in enumerate(concepts):
        groups: dict[tuple[int, ...], list[str]] = {}
        for p in dict.fromkeys(d.prompts):
            groups.setdefault(tuple(sorted({i, *shows(p)})), []).append(p)
        for idx, prompts in groups.items():
            sets.append(token_embeddings(parts, prompts, pos))
            applies.append(idx)
    return fuse_closed_form(base, deltas, sets, preserve, params.method.fusion_beta, params.method.fusion_ridge, applies)


@torch.no_grad()
def write_weights(unet, weights: dict[str, torch.Tensor]) -> None:
    for k, w in weights.items():
        unet.get_parameter(k).copy_(w)
