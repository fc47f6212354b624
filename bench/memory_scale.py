"""Peak memory of TRUST vs full fine-tuning as the UNet grows: `python bench/memory_scale.py [--quick]`.

The method benchmark (bench/lib/methods.py) measures TRUST's peak memory at ~0.9x full
fine-tuning's on the world model: its ~1.7M-parameter UNet is so small that activations and the
frozen copy dominate, and full fine-tuning's extra cost (a gradient and two Adam moments for every
UNet weight) is tiny. This script measures how that ratio moves with model size.

For each width w it builds `DiffusionParts` from configs, random init (memory does not depend on the
weights' values): a UNet with SD v1's layout (CrossAttnDownBlock2D x3 + DownBlock2D, UpBlock2D +
CrossAttnUpBlock2D x3, layers_per_block 2, attention_head_dim 8, cross_attention_dim 768, 32 norm
groups) and block_out_channels (w, 2w, 4w, 4w), i.e. SD's (320, 640, 1280, 1280) scaled by w/320
(w a multiple of 32 because of the 32 norm groups); a 1-layer CLIP text encoder of hidden size 768
(77 tokens, like SD's); a tiny AutoencoderKL (x8 downsampling; not used by training); SD's DDPM
scheduler. The forget data are random latents of the UNet's latent shape (default SD's 64x64).

It then runs the registry's real TRUST (the TRUST-CIP row of the method benchmark: `denoise` scorer
mask over `cross_attention_params`, then the method) and full fine-tuning (the benchmark's `full`
row), set up as `run_bench` sets them up: each in a fresh deep copy of the UNet, with set-up and
`--steps` optimisation steps inside `PeakMemory` (peak RSS above the level at start, sampled every
5 ms). FinetuneParams / LocalizeParams are the defaults except batch size (`--batch`, used for both
`finetune.batch_size` and the scorer's `localize.batch_size`, so TRUST's saliency pass sees the same
batch as the training step), preserve_weight=0 (no preservation data) and steps.

Writes OUT/memory_scale.{json,md,png}: per width, UNet parameters, peak memory of each method, the
ratio TRUST/full, trainable parameters and s/step; the plot marks the world benchmark's ratio (from
bench/results/methods.json) and the issue's 0.5 bar. SD at full width (w=320, 860M parameters) needs
~19 GiB here before activations for full fine-tuning (base UNet + its copy + frozen copy + gradients +
Adam: 6x 3.2 GiB) and is not in the default list (`--widths 320` runs it where there is the RAM). `--quick`: a smoke run (widths 8 and 16 with 8 norm groups, 8x8 latents, 1 step; written to
.cache/bench-memory-scale-quick unless --out is given).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SD_BLOCKS = (320, 640, 1280, 1280)  # SD v1's block_out_channels
SD_TEXT_HIDDEN = 768
SD_TOKENS = 77
RUN_LABELS = ("TRUST-CIP", "full")  # the method benchmark's rows, with their overrides
DEFAULT_WIDTHS = (32, 64, 128, 160)  # SD width x 0.1, 0.2, 0.4, 0.5
QUICK_WIDTHS = (8, 16)  # with 8 norm groups: a smoke run, not SD's layout
PROMPTS = [("a red circle", "a circle"), ("a big red circle", "a big circle"),
           ("a red circle on stripes", "a circle on stripes"), ("red circle", "circle")]


def sd_unet_config(width: int, latent: int, norm_groups: int = 32) -> dict:
    """SD v1's UNet config with block_out_channels (w, 2w, 4w, 4w) (SD: 32 norm groups; fewer only for smoke runs)."""
    if width % norm_groups or width % 8:
        raise ValueError(f"width {width}: must be a multiple of the {norm_groups} norm groups and of the 8 heads")
    return dict(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=tuple(width * SD_BLOCKS[i] // SD_BLOCKS[0] for i in range(4)),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=SD_TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=norm_groups,
    )


def build_tokenizer():
    from trust.world.captions import all_words
    from trust.world.tokenizer import build_tokenizer as build

    return build(all_words(), model_max_length=SD_TOKENS)


def build_parts(width: int, latent: int, tokenizer, text_layers: int = 1, norm_groups: int = 32, seed: int = 0):
    """DiffusionParts with an SD-v1-shaped UNet of width `width`, random init."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from trust.models.parts import KIND_SD, DiffusionParts

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**sd_unet_config(width, latent, norm_groups))
    vae = AutoencoderKL(  # x8 like SD's; training never calls it
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * 4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=latent * 8, scaling_factor=0.18215,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=SD_TEXT_HIDDEN, intermediate_size=4 * SD_TEXT_HIDDEN,
        num_hidden_layers=text_layers, num_attention_heads=12, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          steps_offset=1, clip_sample=False)
    parts = DiffusionParts(tokenizer, text, unet, sched, vae, kind=KIND_SD)
    return parts.requires_grad_(False).eval()


def forget_data(parts, references: int, seed: int = 0):
    """ForgetData with random reference latents of the UNet's latent shape (no sampling, no VAE)."""
    import torch

    from trust.methods.data import ForgetData

    picked = [PROMPTS[i % len(PROMPTS)] for i in range(references)]
    with torch.no_grad():
        target = parts.encode_text([p for p, _ in picked])
        anchor = parts.encode_text([a for _, a in picked])
    g = torch.Generator().manual_seed(seed)
    return ForgetData(latents=torch.randn(references, *parts.latent_shape, generator=g), target_emb=target,
                      anchor_emb=anchor, prompts=[p for p, _ in picked])


def measure_method(parts, data, run, ft, loc, steps: int) -> dict:
    """One method as `run_bench` runs it: fresh UNet copy; set-up (TRUST: its initial mask) and steps in PeakMemory."""
    from trust.methods.loop import build_method, train
    from trust.methods.saliency import expand_mask, mask_size
    from trust.utils.memory import PeakMemory

    device = parts.unet.device
    p = copy.copy(parts)
    p.unet = copy.deepcopy(parts.unet)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        method = build_method(p, data, ft, loc)  # TRUST: its initial mask through its scorer
        setup_s = time.perf_counter() - t0
        step_times = train(method, steps).step_s
    row = {
        "label": run.label, "method": run.method, "lr": ft.lr, "peak_memory_bytes": mem.bytes,
        "rss_at_start_bytes": mem.start, "trainable_parameters": method.trainable_parameters(),
        "setup_s": setup_s, "s_per_step": sum(step_times) / len(step_times), "step_s": step_times, "memory": mem.kind,
    }
    if method.mask:
        row["mask_rows"] = mask_size(method.mask)
        row["masked_weights"] = int(sum(expand_mask(m, method.params[k]).sum().item() for k, m in method.mask.items()))
    del method, p
    gc.collect()
    return row


def warm_up(tokenizer, runs, ft_for, loc, width: int, norm_groups: int) -> None:
    """One tiny untimed run of each method first: one-off allocations (autograd engine, kernels) are not charged
    to the first measured run."""
    parts = build_parts(width, 8, tokenizer, norm_groups=norm_groups)
    data = forget_data(parts, 2)
    for run in runs:
        measure_method(parts, data, run, ft_for(run, 1), loc, 1)


def run_scale(widths, latent: int, batch: int, steps: int, references: int, text_layers: int, norm_groups: int = 32,
              log=print) -> list[dict]:
    from trust.config import FinetuneParams, LocalizeParams
    from bench.lib.methods import select_runs
    from trust.methods.saliency import cross_attention_params

    runs = select_runs(",".join(RUN_LABELS))
    loc = LocalizeParams(batch_size=batch)

    def ft_for(run, n_steps):
        return run.finetune(FinetuneParams(), batch_size=batch, preserve_weight=0.0, steps=n_steps,
                            references=references)

    tokenizer = build_tokenizer()
    warm_up(tokenizer, runs, ft_for, loc, min(widths), norm_groups)
    rows = []
    for w in widths:
        t0 = time.perf_counter()
        parts = build_parts(w, latent, tokenizer, text_layers, norm_groups)
        data = forget_data(parts, references)
        n = sum(p.numel() for p in parts.unet.parameters())
        row = {"width": w, "sd_scale": w / SD_BLOCKS[0], "block_out_channels": list(parts.unet.config.block_out_channels),
               "unet_parameters": n, "unet_weight_bytes": sum(p.numel() * p.element_size() for p in parts.unet.parameters()),
               "cross_attention_parameters": sum(p.numel() for p in
                                                 cross_attention_params(parts.unet, loc.modules).values()),
               "methods": {}}
        for run in runs:
            r = measure_method(parts, data, run, ft_for(run, steps), loc, steps)
            row["methods"][run.method] = r
            log(f"width {w} ({n / 1e6:.1f}M): {run.label:9s} peak {r['peak_memory_bytes'] / 2**20:8.1f} MiB, "
                f"trainable {r['trainable_parameters']:,}, {r['s_per_step']:.2f} s/step, set-up {r['setup_s']:.1f}s")
        tr, full = row["methods"]["trust"], row["methods"]["full"]
        per = row["unet_weight_bytes"] // n  # bytes per parameter (fp32: 4)
        for r in (tr, full):  # weight-shaped state: frozen copy + gradient + 2 Adam moments of the trainable weights
            r["weight_state_bytes"] = row["unet_weight_bytes"] + 3 * r["trainable_parameters"] * per
            r["other_bytes"] = r["peak_memory_bytes"] - r["weight_state_bytes"]  # activations, workspaces, ...
        row["ratio_trust_full"] = tr["peak_memory_bytes"] / full["peak_memory_bytes"]
        row["seconds"] = time.perf_counter() - t0
        log(f"width {w}: TRUST/full peak memory {row['ratio_trust_full']:.2f} ({row['seconds']:.0f}s)")
        rows.append(row)
        del parts, data
        gc.collect()
    return rows


def world_ratio(path: Path) -> dict | None:
    """The method benchmark's measured TRUST-CIP / full peak memory on the world (None if not there)."""
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    by = {r["label"]: r for r in res.get("runs", [])}
    if "TRUST-CIP" not in by or "full" not in by:
        return None
    tr, full = by["TRUST-CIP"], by["full"]
    return {"source": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "unet_parameters": full["trainable_parameters"],  # full fine-tuning trains every UNet weight
            "trust_peak_memory_bytes": tr["peak_memory_bytes"], "full_peak_memory_bytes": full["peak_memory_bytes"],
            "ratio_trust_full": tr["peak_memory_bytes"] / full["peak_memory_bytes"],
            "batch_size": res.get("finetune_base", {}).get("batch_size"), "device": res.get("device")}


def sd_size(norm_groups: int = 32) -> dict:
    """SD v1's UNet (w=320) parameter counts, built on the meta device (no memory): for the not-measured note."""
    import torch
    from diffusers import UNet2DConditionModel

    from trust.methods.saliency import cross_attention_params

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_unet_config(SD_BLOCKS[0], 64, norm_groups))
    return {"width": SD_BLOCKS[0], "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "cross_attention_parameters": sum(p.numel() for p in cross_attention_params(unet, ["to_q", "to_k", "to_v"])
                                              .values())}


def markdown(result: dict) -> str:
    s = result["settings"]
    mib = 2**20
    lines = [
        "# Peak memory vs model size: TRUST-CIP vs full fine-tuning",
        "",
        f"SD-v1-layout UNets (block_out_channels = SD's (320, 640, 1280, 1280) x w/320, layers_per_block 2, "
        f"attention_head_dim 8, cross_attention_dim 768, "
        f"{s['norm_groups']} norm groups), **random weights** (memory does not depend on the values), "
        f"latents {s['latent']}x{s['latent']} (SD: 64x64), {SD_TOKENS}-token text condition from a "
        f"{s['text_layers']}-layer CLIP text encoder of hidden size 768. Batch size {s['batch']} (finetune and the "
        f"`denoise` scorer), {s['steps']} optimisation steps per method after set-up (TRUST: initial mask), "
        f"FinetuneParams/LocalizeParams defaults otherwise, preserve_weight 0. Each method in a fresh deep copy "
        f"of the UNet; peak memory = {result['memory']} above the level at start (set-up + steps), as in the "
        f"method benchmark. Machine: {result['machine']}, torch threads {result['torch_threads']}, "
        f"device {result['device']}.",
        "",
        "| w (x SD) | UNet params | TRUST peak (MiB) | full peak (MiB) | TRUST / full | TRUST trainable | "
        "TRUST masked weights | full trainable | TRUST s/step | full s/step | TRUST set-up (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        t, f = r["methods"]["trust"], r["methods"]["full"]
        lines.append(
            f"| {r['width']} ({r['sd_scale']:g}) | {r['unet_parameters']:,} | {t['peak_memory_bytes'] / mib:.0f} "
            f"| {f['peak_memory_bytes'] / mib:.0f} | {r['ratio_trust_full']:.2f} | {t['trainable_parameters']:,} "
            f"| {t.get('masked_weights', 0):,} | {f['trainable_parameters']:,} | {t['s_per_step']:.1f} "
            f"| {f['s_per_step']:.1f} | {t['setup_s']:.1f} |")
    w = result.get("world")
    if w:
        lines += ["", f"World benchmark ({w['source']}, 16px world UNet of {w['unet_parameters']:,} parameters, batch "
                      f"{w['batch_size']}): TRUST-CIP {w['trust_peak_memory_bytes'] / mib:.1f} MiB, full "
                      f"{w['full_peak_memory_bytes'] / mib:.1f} MiB, ratio {w['ratio_trust_full']:.2f}."]
    lines += [
        "",
        "Both methods keep a frozen copy of the UNet (the training targets); full fine-tuning adds a gradient and "
        "two Adam moments for every UNet weight (3x the UNet's weight bytes), TRUST only for the attn2 "
        "to_q/to_k/to_v weights (its trainable parameters; the mask zeroes gradients of rows outside it). "
        "Activations saved for backward grow with width x latent area, the weight-shaped state with width^2, so "
        "the ratio falls as the UNet grows.",
        "",
        "Weight-shaped state (frozen copy + gradient + 2 Adam moments of the trainable weights, computed from the "
        "parameter counts) and the rest of the measured peak (activations, workspaces):",
        "",
        "| w | TRUST state (MiB) | TRUST rest (MiB) | full state (MiB) | full rest (MiB) |",
        "|---|---|---|---|---|",
        *[f"| {r['width']} | {r['methods']['trust']['weight_state_bytes'] / mib:.0f} "
          f"| {r['methods']['trust']['other_bytes'] / mib:.0f} | {r['methods']['full']['weight_state_bytes'] / mib:.0f} "
          f"| {r['methods']['full']['other_bytes'] / mib:.0f} |" for r in result["rows"]],
    ]
    sd = result.get("sd_v1")
    if sd:
        gib = 2**30
        w_bytes = sd["unet_parameters"] * 4
        lines += [
            "",
            f"SD v1 at full width (w=320: {sd['unet_parameters']:,} UNet parameters, {sd['cross_attention_parameters']:,} "
            f"in attn2 to_q/to_k/to_v) was **not measured**: in fp32 its weights are {w_bytes / gib:.1f} GiB, so full "
            f"fine-tuning's weight-shaped state alone is {4 * w_bytes / gib:.1f} GiB (TRUST's: "
            f"{(w_bytes + 12 * sd['cross_attention_parameters']) / gib:.1f} GiB), on top of the base UNet and its "
            f"working copy ({2 * w_bytes / gib:.1f} GiB) held outside the measured region, plus activations: "
            f"{6 * w_bytes / gib:.1f} GiB before activations, against this machine's {result['ram_gib']:.1f} GiB of "
            "RAM (shared with other jobs).",
        ]
    lines += [
        "",
        f"Total wall-clock {result['seconds']:.0f}s.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    xs = [r["unet_parameters"] for r in rows]
    ys = [r["ratio_trust_full"] for r in rows]
    ax.plot(xs, ys, "o-", color="#c0392b", label=f"SD-v1 layout, {result['settings']['latent']}x"
                                                  f"{result['settings']['latent']} latents, batch "
                                                  f"{result['settings']['batch']} (random weights)")
    for r in rows:
        ax.annotate(f"w={r['width']}", (r["unet_parameters"], r["ratio_trust_full"]), textcoords="offset points",
                    xytext=(4, 6), fontsize=8)
    w = result.get("world")
    if w:
        ax.plot([w["unet_parameters"]], [w["ratio_trust_full"]], "s", color="#2c3e50", ms=8,
                label=f"world benchmark (16px, batch {w['batch_size']}): {w['ratio_trust_full']:.2f}")
    ax.axhline(0.5, color="k", ls="--", lw=0.9, label="bar: TRUST <= 0.5x full")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("UNet parameters")
    ax.set_ylabel("peak memory TRUST-CIP / full fine-tuning")
    ax.set_title(f"peak memory ratio vs model size ({result['machine']}, {result['memory']})", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    mib = 2**20
    for key, name, colour in (("trust", "TRUST-CIP", "#c0392b"), ("full", "full fine-tuning", "#7f8c8d")):
        ax2.plot(xs, [r["methods"][key]["peak_memory_bytes"] / mib for r in rows], "o-", color=colour,
                 label=f"{name}: measured peak")
        ax2.plot(xs, [r["methods"][key]["weight_state_bytes"] / mib for r in rows], ":", color=colour,
                 label=f"{name}: weight-shaped state (computed)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("UNet parameters")
    ax2.set_ylabel("MiB")
    ax2.set_title("peak memory above start; state = frozen copy + grad + Adam of trainable weights", fontsize=9)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--quick", action="store_true", help="smoke run: widths 8,16 (8 norm groups), 8x8 latents, 1 step")
    ap.add_argument("--widths", default=None,
                    help=f"comma-separated base widths w, multiples of 32 (default {','.join(map(str, DEFAULT_WIDTHS))})")
    ap.add_argument("--latent", type=int, default=None, help="latent size (default 64 = SD's; --quick: 8)")
    ap.add_argument("--batch", type=int, default=1, help="finetune.batch_size and localize.batch_size")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps per method (default 3; --quick: 1)")
    ap.add_argument("--references", type=int, default=4, help="random reference latents in the forget data")
    ap.add_argument("--norm-groups", type=int, default=None, help="GroupNorm groups (default 32 = SD's; --quick: 8)")
    ap.add_argument("--text-layers", type=int, default=1, help="layers of the CLIP text encoder (hidden 768)")
    ap.add_argument("--world", type=Path, default=ROOT / "bench" / "results" / "methods.json",
                    help="method benchmark results with the world's TRUST-CIP and full peak memory")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    widths = [int(x) for x in a.widths.split(",") if x.strip()] if a.widths else list(
        QUICK_WIDTHS if a.quick else DEFAULT_WIDTHS)
    latent = a.latent or (8 if a.quick else 64)
    steps = a.steps or (1 if a.quick else 3)
    norm_groups = a.norm_groups or (8 if a.quick else 32)
    out = a.out if not a.quick or a.out != ROOT / "bench" / "results" else ROOT / ".cache" / "bench-memory-scale-quick"
    t0 = time.perf_counter()
    rows = run_scale(widths, latent, a.batch, steps, a.references, a.text_layers, norm_groups)
    result = {
        "what": "peak memory of TRUST-CIP vs full fine-tuning on SD-v1-layout UNets of growing width (random weights)",
        "machine": f"{os.cpu_count()}-core CPU ({platform.machine()})", "device": "cpu", "ram_gib": ram_gib(),
        "memory": rows[0]["methods"]["trust"]["memory"] if rows else None,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "settings": {"widths": widths, "latent": latent, "batch": a.batch, "steps": steps, "references": a.references,
                     "text_layers": a.text_layers, "text_tokens": SD_TOKENS, "norm_groups": norm_groups, "quick": a.quick, "runs": list(RUN_LABELS)},
        "rows": rows, "world": world_ratio(a.world), "sd_v1": sd_size(norm_groups), "seconds": time.perf_counter() - t0,
    }
    from bench.lib.results import write_results

    write_results(result, out, "memory_scale", markdown, plot)
    print((out / "memory_scale.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
