"""Full-size Stable Diffusion v1.4 with random weights: what TRUST, ESD-x and full fine-tuning cost at
SD size, and how fast evaluation samples, on this machine.

    python bench/sd_full.py build .cache/sd-v1-4-random        # ~4 GB, never committed
    python bench/sd_full.py measure .cache/sd-v1-4-random [--dtype bfloat16] [--methods trust,esd-x,full]

`build` writes a StableDiffusionPipeline folder (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/; safetensors) from the published SD v1.4 configs, seeded random init:
UNet2DConditionModel (320/640/1280/1280, 2 layers per block, 8 heads, cross-attention 768, 64x64
latents: 859.5 M parameters), AutoencoderKL (128/256/512/512, x8), the CLIP ViT-L/14 text encoder
(12 layers, 768 wide, 49,408-token embedding table, 77 positions) and SD's DDPM schedule. The
tokenizer is the world's: SD's BPE vocabulary files are not on this machine, and a tokenizer only
maps words to ids of that table, so the compute is SD's (77 tokens a prompt).

`measure` runs each method in its own process (its peak resident memory is the process's
ru_maxrss: the model loaded, set-up and the steps, as a `trust run` stage would hold it), with the
minimal budgets of a smoke run: 1 reference (random latents, as bench/memory_scale.py's), batch 1
for the training step and TRUST's saliency, `--steps` training steps (s/step: their mean after the first).
Then evaluation: `--images` images at `--sample-steps` DDIM steps with guidance (images/s), VAE
decode included. A method whose weight-shaped state (the UNet, its frozen copy, and the gradients,
Adam moments and step counts of its trainable weights, in float32) would not fit in this machine's
available memory is not started: its row says what it needs. `--dtype` is model.dtype
(trust/models/precision.py). Writes bench/results/sd_full{_DTYPE}.{json,md}. On a GPU machine the
same command with `--device cuda --dtype bfloat16` gives the README's GPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The published SD v1.4 component configs (CompVis/stable-diffusion-v1-4: unet/, vae/, text_encoder/ config.json)
UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
            downsample_padding=1, act_fn="silu", norm_eps=1e-5, center_input_sample=False)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
           act_fn="silu", sample_size=512, scaling_factor=0.18215)
TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, clip_sample=False)
METHODS = {  # label -> finetune overrides (the method benchmark's rows; baselines without preservation, as published)
    "trust": {"method": {"name": "trust"}},
    "esd-x": {"method": {"name": "esd", "variant": "x"}, "lr": 1e-5, "preserve_weight": 0.0},
    "full": {"method": {"name": "full"}, "lr": 1e-5, "preserve_weight": 0.0},
}
PROMPT = "a red circle on a plain background"  # evaluation's prompt
GiB = 1024**3


def build(folder: Path, seed: int = 0) -> None:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from trust.models import save_model
    from trust.models.parts import KIND_SD, DiffusionParts
    from trust.world.captions import all_words
    from trust.world.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(all_words(), model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(**TEXT, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))
    parts = DiffusionParts(tok, text, UNet2DConditionModel(**UNET), DDPMScheduler(**SCHEDULER), AutoencoderKL(**VAE),
                           kind=KIND_SD)
    n = sum(p.numel() for p in parts.unet.parameters())
    print(f"UNet {n:,} parameters; writing {folder}", flush=True)
    save_model(parts, folder)


def _estimate_bytes(label: str, unet_params: int, attn2_params: int) -> int:
    """Weight-shaped float32 state of a run: the UNet (trained in place) and its frozen copy, and for the
    trainable weights a gradient, two Adam moments and MaskedAdam's per-entry step count (TRUST, ESD-x:
    attn2's projections; full: every UNet weight)."""
    trainable = unet_params if label == "full" else attn2_params
    return 4 * (2 * unet_params + 4 * trainable)


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_one(folder: Path, label: str, dtype: str, device: str, steps: int) -> dict:
    from bench.memory_scale import forget_data
    from trust.config import FinetuneParams, LocalizeParams
    from trust.methods.loop import build_method, train
    from trust.models import load_model

    t0 = time.perf_counter()
    parts = load_model(folder, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    # the reference latents are random (the memory benchmark's forget data): a training step's cost does not
    # depend on their values, and sampling is measured on its own (`eval`)
    data = forget_data(parts, 1)
    keep = forget_data(parts, 1, seed=1)  # TRUST's preservation term (the world default's preserve_weight 30)
    ft = FinetuneParams().updated(batch_size=1, steps=steps, **METHODS[label])
    loc = LocalizeParams(batch_size=1)
    t0 = time.perf_counter()
    method = build_method(parts, data, ft, loc, keep=keep)
    setup_s = time.perf_counter() - t0
    result = train(method, steps)
    timed = result.step_s[1:] or result.step_s
    return {"label": label, "dtype": dtype, "device": device, "load_s": load_s,
            "setup_s": setup_s, "step_s": result.step_s, "s_per_step": sum(timed) / len(timed),
            "trainable_parameters": method.trainable_parameters(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def measure_eval(folder: Path, dtype: str, device: str, images: int, sample_steps: int) -> dict:
    from trust.models import load_model
    from trust.sampling import generate

    parts = load_model(folder, device=device, dtype=dtype)
    t0 = time.perf_counter()
    out = generate(parts, [PROMPT] * images, list(range(images)), steps=sample_steps, guidance=7.5)
    s = time.perf_counter() - t0
    return {"label": "evaluation", "dtype": dtype, "device": device, "images": images, "sample_steps": sample_steps,
            "seconds": s, "images_per_s": images / s, "image_size": int(out.shape[-1]),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _child(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["(no output)"])[-1], "returncode": res.returncode}
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Full-size SD v1.4 (random weights), model.dtype {meta['dtype']}, device {meta['device']}", "",
             f"`{meta['command']}`; {meta['machine']}, torch threads {meta['threads']}. UNet {meta['unet_params']:,} "
             f"parameters. Each row in its own process; peak memory = the process's peak resident set (model loaded, "
             f"set-up, steps). Minimal budgets: 1 reference (random latents), batch 1, "
             f"{meta['steps']} training steps (s/step: mean after the first).", "",
             "| run | peak RSS (GiB) | s/step | set-up (s) | load (s) | trainable | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["label"] == "evaluation":
            continue
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['label']} | - | - | - | - | - | {r.get('skipped') or r.get('error')} |")
            continue
        lines.append(f"| {r['label']} | {r['peak_rss_bytes'] / GiB:.1f} | {r['s_per_step']:.1f} | {r['setup_s']:.1f} | "
                     f"{r['load_s']:.1f} | {r['trainable_parameters']:,} | |")
    ev = next((r for r in rows if r["label"] == "evaluation"), None)
    if ev and "error" not in ev:
        lines += ["", f"Evaluation sampling: {ev['images']} images of {ev['image_size']} px at {ev['sample_steps']} DDIM "
                      f"steps with guidance (VAE decode included): {ev['seconds']:.1f} s, **{ev['images_per_s']:.3f} "
                      f"images/s**, peak RSS {ev['peak_rss_bytes'] / GiB:.1f} GiB."]
    elif ev:
        lines += ["", f"Evaluation sampling failed: {ev['error']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("build", "measure", "one", "eval"))
    ap.add_argument("folder", type=Path)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="trust,esd-x,full")
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sample-steps", type=int, default=4)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    if a.command == "build":
        build(a.folder)
        return 0
    if a.command == "one":
        print(json.dumps(measure_one(a.folder, a.method, a.dtype, a.device, a.steps)))
        return 0
    if a.command == "eval":
        print(json.dumps(measure_eval(a.folder, a.dtype, a.device, a.images, a.sample_steps)))
        return 0
    from trust.models.loading import UnetFileState

    shapes = UnetFileState(a.folder).shapes  # plain or fp16-variant files, one or several shards
    count = lambda s: int(torch.Size(s).numel())  # noqa: E731
    unet_params = sum(count(s) for s in shapes.values())
    attn2 = sum(count(s) for k, s in shapes.items() if ".attn2.to_" in k and k.endswith("weight"))
    common = ["--dtype", a.dtype, "--device", a.device, "--steps", str(a.steps), "--sample-steps", str(a.sample_steps)]
    rows = []
    for label in [m.strip() for m in a.methods.split(",") if m.strip()]:
        need, have = _estimate_bytes(label, unet_params, attn2), _available_bytes()
        if a.device == "cpu" and need > have:
            rows.append({"label": label, "skipped": f"not run: its float32 weight-shaped state alone is "
                                                    f"{need / GiB:.1f} GiB, {have / GiB:.1f} GiB available"})
        else:
            t0 = time.perf_counter()
            rows.append({**_child(["one", str(a.folder), "--method", label, *common]), "label": label,
                         "wall_s": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    rows.append({**_child(["eval", str(a.folder), *common, "--images", str(a.images)]), "label": "evaluation"})
    print(json.dumps(rows[-1]), flush=True)
    meta = {"dtype": a.dtype, "device": a.device, "steps": a.steps, "sample_steps": a.sample_steps,
            "unet_params": unet_params, "threads": torch.get_num_threads(),
            "machine": f"{os.cpu_count()}-core CPU ({platform.machine()})" if a.device == "cpu" else a.device,
            "command": "python bench/sd_full.py measure FOLDER " + " ".join(sys.argv[3:] if argv is None else argv[2:])}
    name = "sd_full" + ("" if a.dtype == "float32" else f"_{a.dtype}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (a.out / f"{name}.md").write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
