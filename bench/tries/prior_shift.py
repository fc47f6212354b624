"""Experiment (issue 14, not part of the library): can fine-tuning move the world's *prior* for
concept-free prompts ("a red shape", "") away from circles?

`python bench/tries/prior_shift.py STEPS SCOPE LR [MODEL_DIR]`, SCOPE one of kv (attn2 to_k/to_v),
attn2, all (the whole UNet). Trains the plain denoising loss on freshly drawn scenes without circles
(squares, triangles, crosses), captioned concept-free (colour-only templates, 50%), empty (20%) or
fully named (30%): "retraining on the retain data", the unlearning gold standard. Prints the shape
rates (world classifier, 24 seeds, 20 DDIM steps, guidance 4) of generic prompts ("object object object object object", "an object", "a scarlet object", "a shape"
are no training caption) and named prompts
before and after. Results: bench/results/tries/robust_tuning.md.
"""
import sys, time, copy
import numpy as np
import torch
torch.set_num_threads(1)
from trust.models.loading import load_model
from trust.world.classifier import ConceptClassifier
from trust.world.scenes import random_scene, render, to_model_range, Scene
from trust.world.captions import fill, COLOUR_TEMPLATES, EMPTY_TEMPLATES, FULL_TEMPLATES, SHAPE_TEMPLATES
from trust.world.vocabulary import COLOUR_WORDS, BACKGROUND_WORDS, SHAPE_WORDS, SHAPES
from trust.sampling import generate
from pathlib import Path

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
scope = sys.argv[2] if len(sys.argv) > 2 else "kv"
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
base_dir = sys.argv[4] if len(sys.argv) > 4 else "models/world"
parts = load_model(base_dir)
clf = ConceptClassifier.load(Path("models/world_classifier")).eval()

EVAL_GENERIC = ["", "object object object object object", "an object", "a scarlet object", "something crimson",
                "a red shape", "a blue object on a striped background", "a shape"]
EVAL_NAMED = ["a red circle", "a crimson disk", "a circle", "a red square", "a blue triangle", "a green cross",
              "a yellow square on a striped background"]
SEEDS = list(range(5000, 5024))


def rates(prompts):
    out = {}
    for p in prompts:
        imgs = generate(parts, [p] * len(SEEDS), SEEDS, 20, 4.0)
        with torch.no_grad():
            pred = clf.predict(imgs)
        out[p] = {s: sum(x == s for x in pred["shape"]) / len(SEEDS) for s in SHAPES}
    return out


def show(tag, r):
    print(tag, flush=True)
    for p, d in r.items():
        print(f"  {p!r:45s} " + " ".join(f"{s[:3]} {v:.2f}" for s, v in d.items()), flush=True)


t0 = time.time()
before = rates(EVAL_GENERIC + EVAL_NAMED)
show("BEFORE", before)
print("eval s", time.time() - t0, flush=True)

unet = parts.unet
params = []
for n, p in unet.named_parameters():
    take = ("attn2" in n and (".to_k." in n or ".to_v." in n)) if scope == "kv" else (
        "attn2" in n if scope == "attn2" else True)
    p.requires_grad_(take)
    if take:
        params.append(p)
print("trainable", sum(p.numel() for p in params))
opt = torch.optim.Adam(params, lr=lr)
rng = np.random.default_rng(0)
sched = parts.scheduler
B = 32
KEEP = [s for s in SHAPES if s != "circle"]


def batch():
    imgs, caps = [], []
    for _ in range(B):
        sc = random_scene(rng)
        sh = KEEP[rng.integers(3)]
        sc = Scene(sh, sc.colour, sc.background, sc.cx, sc.cy, sc.radius, sc.angle, sc.bg_level, sc.stripe_phase)
        b = BACKGROUND_WORDS[sc.background][rng.integers(4)]
        c = COLOUR_WORDS[sc.colour][rng.integers(3)]
        r = rng.random()
        if r < 0.5:
            cap = fill(COLOUR_TEMPLATES[rng.integers(3)], c=c, b=b)
        elif r < 0.7:
            cap = ""
        else:  # retain: named non-circle shapes
            s = SHAPE_WORDS[sh][rng.integers(4)]
            cap = fill(FULL_TEMPLATES[rng.integers(len(FULL_TEMPLATES))], c=c, s=s, b=b)
        imgs.append(render(sc, 16))
        caps.append(cap)
    return torch.from_numpy(to_model_range(np.stack(imgs))), caps


unet.train()
t0 = time.time()
for step in range(steps):
    x0, caps = batch()
    with torch.no_grad():
        ctx = parts.encode_text(caps)
    noise = torch.randn_like(x0)
    t = torch.randint(0, sched.config.num_train_timesteps, (B,))
    xt = sched.add_noise(x0, noise, t)
    pred = unet(xt, t, encoder_hidden_states=ctx).sample
    loss = torch.nn.functional.mse_loss(pred, noise)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 0:
        print(step, f"{loss.item():.4f}", f"{time.time()-t0:.0f}s", flush=True)
unet.eval()
print("train s", time.time() - t0, flush=True)
after = rates(EVAL_GENERIC + EVAL_NAMED)
show("AFTER", after)
