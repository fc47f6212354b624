"""ANT multi-concept erasure (paper Eq. 7, MACE-style): one LoRA per concept, fused in closed form.

(a) `train_concept_lora`: a LoRA (peft, rank `ant_lora_rank`) on every cross-attention key/value
    projection (`attn2.to_k`, `attn2.to_v`) of a copy of the UNet, trained with the ANT loss
    (trust.methods.ant.ant_loss, same timestep convention) against the frozen original; returns
    Delta W = B A * alpha/r per layer, keyed by the UNet parameter name (`...attn2.to_k.weight`).
(b) `fuse_closed_form`: per layer,
        W* = argmin_W'  sum_i sum_j ||W' e_j - (W + Delta W_i) e_j||^2 + beta sum_k ||W' e_k - W e_k||^2
                        + lam ||W' - W||_F^2
    with e_j the token embeddings of concept i's prompts and e_k those of the preservation prompts.
    Normal equations:  W* A = B,  A = sum_i E_i^T E_i + beta E_p^T E_p + lam I,
                                  B = sum_i (W + Delta W_i) E_i^T E_i + beta W E_p^T E_p + lam W
    (E rows are embeddings). The ridge lam = ant_fusion_ridge * mean(diag(A without ridge)) is
    tiny and only makes A invertible when the embeddings do not span the D dimensions; it pulls
    towards the base weights. Solved in float64. No concept: the base weights, unchanged.
"""

from __future__ import annotations

import copy

import torch

from trust.config import FinetuneParams
from trust.methods.ant import ant_loss, draw_timesteps, split_timestep
from trust.methods.data import ForgetData
from trust.models.parts import DiffusionParts
from trust.utils.seeding import torch_generator

LORA_TARGETS = r".*attn2\.(to_k|to_v)$"


def kv_weight_names(unet) -> list[str]:
    """Parameter names of the cross-attention key/value projection weights."""
    return [k for k, _ in unet.named_parameters() if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k]


def train_concept_lora(parts: DiffusionParts, data: ForgetData, params: FinetuneParams,
                       concept_index: int = 0) -> dict[str, torch.Tensor]:
    """Train one concept's LoRA with the ANT loss; Delta W per attn2 to_k/to_v weight."""
    from peft import LoraConfig, inject_adapter_in_model

    frozen = parts.unet.eval()
    frozen.requires_grad_(False)
    model = copy.deepcopy(frozen)
    cfg = LoraConfig(r=params.ant_lora_rank, lora_alpha=params.ant_lora_alpha, target_modules=LORA_TARGETS,
                     lora_dropout=0.0, init_lora_weights=True)
    model = inject_adapter_in_model(cfg, model)
    lora = {k: p for k, p in model.named_parameters() if "lora_" in k}
    if not lora:
        raise ValueError("the UNet has no attn2.to_k / attn2.to_v layers for the concept LoRA")
    for p in lora.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(lora.values()), lr=params.lr)
    t_split = split_timestep(parts.scheduler, params.ant_split_step, params.ant_ddim_steps)
    with torch.no_grad():
        uncond = parts.encode_text([""])
    n_train = parts.scheduler.config.num_train_timesteps
    for step in range(params.steps):
        g = torch_generator(params.seed, step, 7, concept_index)
        idx = torch.randint(0, len(data), (params.batch_size,), generator=g)
        x0 = data.latents[idx]
        n1, n2 = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)
        t1, t2 = draw_timesteps(g, t_split, n_train)
        loss = ant_loss(model, frozen, parts.scheduler, x0, n1, n2, t1, t2, data.target_emb[idx], uncond,
                        params.ant_eta, params.ant_l1, params.ant_l2, params.ant_l3)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            with torch.no_grad():
                out[f"{name}.weight"] = module.get_delta_weight("default").detach().clone()
    return out


@torch.no_grad()
def token_embeddings(parts: DiffusionParts, prompts: list[str]) -> torch.Tensor:
    """(n, D): the text encoder's states at the real tokens (BOS .. EOS, no padding) of each prompt."""
    if not prompts:
        return torch.zeros(0, parts.text_encoder.config.hidden_size)
    tok = parts.tokenizer(prompts, padding="max_length", max_length=parts.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")
    states = parts.text_encoder(tok.input_ids.to(parts.text_encoder.device))[0]
    return states[tok.attention_mask.bool().to(states.device)].float().cpu()


def fuse_closed_form(base: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]],
                     concept_embs: list[torch.Tensor], preserve_embs: torch.Tensor | None,
                     beta: float, ridge: float) -> dict[str, torch.Tensor]:
    """W* per layer of `base` (out, D) from Eq. 7's normal equations (see the module docstring)."""
    if len(deltas) != len(concept_embs):
        raise ValueError(f"{len(deltas)} concept deltas but {len(concept_embs)} embedding sets")
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
        for d, e in zip(deltas, concept_embs):
            e = e.double()
            ee = e.T @ e
            A += ee
            B += (W + d.get(k, torch.zeros_like(w)).double()) @ ee
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


def ant_multi_concept(parts: DiffusionParts, concepts: list[ForgetData], preserve_prompts: list[str],
                      params: FinetuneParams) -> dict[str, torch.Tensor]:
    """Train one LoRA per concept, fuse them in closed form and write W* into `parts.unet`.

    Returns the fused weights (name -> W*)."""
    names = kv_weight_names(parts.unet)
    base = {k: parts.unet.get_parameter(k).detach().clone() for k in names}
    deltas = [train_concept_lora(parts, data, params, i) for i, data in enumerate(concepts)]
    concept_embs = [token_embeddings(parts, list(dict.fromkeys(d.prompts))) for d in concepts]
    fused = fuse_closed_form(base, deltas, concept_embs, token_embeddings(parts, preserve_prompts),
                             params.ant_fusion_beta, params.ant_fusion_ridge)
    with torch.no_grad():
        for k, w in fused.items():
            parts.unet.get_parameter(k).copy_(w)
    return fused
