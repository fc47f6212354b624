"""Train the world's text-to-image model from scratch: `trust world train`.

diffusers-style recipe (DDPM epsilon loss, min-SNR weighting, classifier-free-guidance
caption dropout, EMA), trained jointly with a fresh CLIP text encoder. Every batch and
noise draw is keyed by (seed, step), so a run resumed from a checkpoint gives the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from tqdm.auto import tqdm

from trust.models.identity_vae import IdentityVAE
from trust.models.loading import save_model
from trust.models.parts import KIND_WORLD, DiffusionParts
from trust.utils.fs import staged_dir
from trust.utils.safetensors_io import load_tensors, save_tensors, write_json
from trust.utils.seeding import torch_generator
from trust.world.architecture import build_world_model
from trust.world.captions import all_words
from trust.world.data import scene_batch
from trust.world.tokenizer import build_tokenizer
from trust.world.config import WorldTrainConfig  # noqa: F401 (its home; re-exported)

console = Console(stderr=True)


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def _snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


class _Checkpoint:
    """Model, EMA and optimizer state as safetensors + JSON (never pickle)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.tensors, self.meta = self.folder / "state.safetensors", self.folder / "state.json"

    def exists(self) -> bool:
        return self.tensors.is_file() and self.meta.is_file()

    def save(self, step: int, params: list, ema: list, opt: torch.optim.Optimizer, losses: list, digest: str):
        t = {}
        for i, p in enumerate(params):
            t[f"param.{i}"] = p.data
            t[f"ema.{i}"] = ema[i]
            st = opt.state.get(p, {})
            for k in ("exp_avg", "exp_avg_sq", "step"):
                if k in st:
                    t[f"opt.{i}.{k}"] = torch.as_tensor(st[k]).reshape(-1) if k == "step" else st[k]
        save_tensors(t, self.tensors)
        write_json({"step": step, "losses": losses, "config_digest": digest}, self.meta)

    def load(self, params: list, ema: list, opt: torch.optim.Optimizer) -> tuple[int, list, str]:
        meta = json.loads(self.meta.read_text())
        t = load_tensors(self.tensors)
        for i, p in enumerate(params):
            p.data.copy_(t[f"param.{i}"])
            ema[i].copy_(t[f"ema.{i}"])
            if f"opt.{i}.exp_avg" in t:
                opt.state[p] = {
                    "step": t[f"opt.{i}.step"].reshape(()).clone(),
                    "exp_avg": t[f"opt.{i}.exp_avg"].clone(),
                    "exp_avg_sq": t[f"opt.{i}.exp_avg_sq"].clone(),
                }
        return meta["step"], meta["losses"], meta["config_digest"]


def train_world(cfg: WorldTrainConfig, out: Path, checkpoint_dir: Path, progress: bool = True) -> dict:
    """Train, checkpointing every `checkpoint_every` steps; resume if a matching checkpoint exists.

    Writes the EMA weights as a world model folder at `out`; returns a summary.
    """
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(all_words())
    unet, text_encoder, noise_sched = build_world_model(
        tokenizer, cfg.image_size, cfg.text_dim, cfg.unet_channels, cfg.text_layers, cfg.text_heads
    )
    unet.train()
    text_encoder.train()
    params = [p for m in (unet, text_encoder) for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    ckpt = _Checkpoint(checkpoint_dir)
    start, losses = 0, []
    if ckpt.exists():
        step, old_losses, digest = ckpt.load(params, ema, opt)
        if digest == cfg.digest():
            start, losses = step, old_losses
            console.print(f"[cyan]resuming world training from step {start} ({ckpt.folder})")
        else:
            console.print(f"[yellow]checkpoint in {ckpt.folder} is for other settings; starting from scratch")
            torch.manual_seed(cfg.seed)
            unet, text_encoder, noise_sched = build_world_model(
                tokenizer, cfg.image_size, cfg.text_dim, cfg.unet_channels, cfg.text_layers, cfg.text_heads
            )
            params = [p for m in (unet, text_encoder) for p in m.parameters()]
            ema = [p.detach().clone() for p in params]
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="world", disable=not progress)
    for step in bar:
        batch = scene_batch(cfg.seed, step, cfg.batch_size, cfg.image_size)
        g = torch_generator(cfg.seed, step, 1)
        drop = torch.rand(len(batch.captions), generator=g) < cfg.cfg_dropout
        captions = ["" if d else c for c, d in zip(batch.captions, drop.tolist())]
        noise = torch.randn(batch.images.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(captions),), generator=g)
        noisy = noise_sched.add_noise(batch.images, noise, t)
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per_sample * _snr_weights(noise_sched, t, cfg.min_snr_gamma)).mean()

        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - cfg.ema_decay)
        losses.append(round(loss.item(), 6))
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            ckpt.save(step + 1, params, ema, opt, losses, cfg.digest())

    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    parts = DiffusionParts(
        tokenizer, text_encoder, unet, noise_sched, IdentityVAE(), kind=KIND_WORLD,
        extra={"image_size": cfg.image_size, "train_config": cfg.model_dump(mode="json")},
    )
    with staged_dir(out) as tmp:
        save_model(parts, tmp)
    return {
        "steps": cfg.steps,
        "resumed_from": start,
        "seconds_this_run": round(time.perf_counter() - t0, 1),
        "final_loss_mean50": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "losses": losses,
        "fingerprint": parts.fingerprint(),
    }
