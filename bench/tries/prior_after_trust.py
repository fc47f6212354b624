"""Experiment (issue 14, not part of the library): concept-free replay over the whole UNet *after* a plain
TRUST erasure, the replay data as `finetune.prior` builds it (the frozen model's images of the kept
prompts, captioned with `free_captions` or the empty prompt).

`python bench/tries/prior_after_trust.py DELTA [STEPS] [LR] [KEEP_WEIGHT]`: DELTA a TRUST delta of the world
(e.g. outputs/finetune/delta.safetensors after `make run`). Trains the replay loss (plus, with KEEP_WEIGHT > 0,
the preservation term: the same images under their own kept prompts held at the base model's prediction),
every UNet weight, Adam at LR (default 3e-4), batch 16, and prints the shape rates (world classifier, 24 seeds, 20 DDIM
steps, guidance 4) of generic ("object object object object object", "an object", "a scarlet object",
"something crimson" and "a shape" are no replay caption), named-circle and named-kept prompts: base, erased, erased + replay.
Results: bench/results/tries/robust_tuning.md.
"""
import copy
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from trust.concepts import build_prompt_sets  # noqa: E402
from trust.config import load_params  # noqa: E402
from trust.delta import apply_delta  # noqa: E402
from trust.methods.prior import PriorData  # noqa: E402
from trust.models.loading import load_model  # noqa: E402
from trust.sampling import generate  # noqa: E402
from trust.utils.seeding import torch_generator  # noqa: E402
from trust.world.classifier import ConceptClassifier  # noqa: E402
from trust.world.vocabulary import SHAPES  # noqa: E402

delta = Path(sys.argv[1])
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 3e-4
keep_weight = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
params = load_params(ROOT / "params.yaml")
base = load_model(ROOT / params.world.model_dir)
erased = apply_delta(copy.deepcopy(base), delta)
clf = ConceptClassifier.load(ROOT / params.world.classifier_dir).eval()

GENERIC = ["", "object object object object object", "an object", "a scarlet object", "something crimson",
           "a red shape", "a blue object on a striped background", "a shape"]
NAMED = ["a red circle", "a crimson disk", "a circle", "an emerald round shape"]
KEPT = ["a red square", "a blue triangle", "a green cross", "a yellow square on a striped background"]
SEEDS = list(range(5000, 5024))


def circle_rates(parts, prompts, shape="circle"):
    out = []
    for p in prompts:
        with torch.no_grad():
            pred = clf.predict(generate(parts, [p] * len(SEEDS), SEEDS, 20, 4.0))["shape"]
        want = shape if shape else next(s for s in SHAPES if s in p or (s == "square" and "square" in p))
        out.append(sum(x == want for x in pred) / len(SEEDS))
    return out


def kept_rates(parts):
    wants = ["square", "triangle", "cross", "square"]
    out = []
    for p, w in zip(KEPT, wants):
        with torch.no_grad():
            pred = clf.predict(generate(parts, [p] * len(SEEDS), SEEDS, 20, 4.0))["shape"]
        out.append(sum(x == w for x in pred) / len(SEEDS))
    return out


def report(tag, parts):
    g, n, k = circle_rates(parts, GENERIC), circle_rates(parts, NAMED), kept_rates(parts)
    print(f"{tag}: generic circles " + " ".join(f"{x:.2f}" for x in g) + f" | max {max(g):.2f}"
          f" | named circles " + " ".join(f"{x:.2f}" for x in n) + " | kept " + " ".join(f"{x:.2f}" for x in k),
          flush=True)


sets = build_prompt_sets(params.concept, params.prompts)
prior = PriorData.build(base, sets["preserve"]["train"], params.concept.detect, 0.25, seed=0)
print(f"{len(prior)} replay images, {len(prior.captions)} captions", flush=True)
report("base", base)
report("erased", erased)
with torch.no_grad():
    source_emb = base.encode_text(prior.sources)
unet = erased.unet
unet.requires_grad_(True).train()
opt = torch.optim.Adam(unet.parameters(), lr=lr)
t0 = time.time()
for step in range(steps):
    x_t, t, c, noise = prior.batch(erased, 16, 0, step, 5)
    loss = ((unet(x_t, t, encoder_hidden_states=c).sample - noise) ** 2).mean()
    if keep_weight > 0:  # the same draw's images under their own kept prompts, held at the base's prediction
        idx, _ = prior.rows(16, torch_generator(0, step, 5))  # the draw prior.batch made
        with torch.no_grad():
            want = base.unet(x_t, t, encoder_hidden_states=source_emb[idx]).sample
        loss = loss + keep_weight * ((unet(x_t, t, encoder_hidden_states=source_emb[idx]).sample - want) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0:
        print(step, f"{loss.item():.4f}", f"{time.time() - t0:.0f}s", flush=True)
unet.requires_grad_(False).eval()
print(f"replay {steps} steps, lr {lr}, keep weight {keep_weight}: {time.time() - t0:.0f}s", flush=True)
report("erased + replay", erased)
