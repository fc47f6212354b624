"""ANT sweep on the world: `python bench/ant_sweep.py [--quick]`.

For each (ant_gamma, ant_split_step) of the grid: builds ANT from params.yaml's finetune section
(method forced to `ant`), records the saliency-mask history (active parameters vs intersected
maps, plotted), trains `--steps` steps and measures the world classifier's detection rate of the
target concept on held-out target prompts and of concept.keep on the preservation prompts, before and after.
Writes bench/results/ant_sweep.{json,md} and ant_mask_history.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--gammas", default="1e-5,1e-4")
    ap.add_argument("--splits", default="30,43,47", help="ant_split_step values (of ant_ddim_steps)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=None, help="default: params.yaml finetune.lr")
    ap.add_argument("--max-maps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=12, help="held-out prompts per role for detection")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1x1 grid, 4 steps, 8 maps, 4 prompts")
    a = ap.parse_args(argv)
    if a.quick:
        a.gammas, a.splits, a.steps, a.max_maps, a.prompts = "1e-5", "43", 4, 8, 4

    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    from trust.concepts import build_prompt_sets
    from trust.config import load_params
    from trust.methods.ant_saliency import plot_mask_history
    from trust.methods.data import ForgetData
    from trust.methods.registry import build_method
    from trust.models import load_model
    from trust.sampling import generate
    from trust.stages.evaluate import detected
    from trust.world.classifier import ConceptClassifier

    params = load_params(a.params)
    world = load_model(ROOT / params.world.model_dir)
    clf = ConceptClassifier.load(ROOT / params.world.classifier_dir)
    sets = build_prompt_sets(params.concept, params.prompts)
    detect = params.concept.detect
    held = {role: [r["prompt"] for r in sets[role]["eval"]][: a.prompts] for role in ("target", "preserve")}

    def rates(parts) -> dict[str, float]:
        out = {}
        for role, ps in held.items():
            images = generate(parts, ps, list(range(len(ps))), steps=params.evaluate.steps,
                              guidance=params.evaluate.guidance)
            labels = clf.predict(images)
            if role == "target":
                out[role] = sum(detected(labels, detect)) / max(1, len(ps))
            else:  # mean over concept.keep of the share of preservation images still showing it
                wants = params.concept.keep or [detect]
                out[role] = sum(sum(detected(labels, w)) / max(1, len(ps)) for w in wants) / len(wants)
        return out

    base = rates(world)
    results = []
    histories = {}
    for gamma in _floats(a.gammas):
        for split in [int(x) for x in a.splits.split(",") if x]:
            ft = params.finetune.model_copy(update={
                "method": "ant", "ant_gamma": gamma, "ant_split_step": split, "ant_max_maps": a.max_maps,
                "steps": a.steps, **({"lr": a.lr} if a.lr else {})})
            parts = copy.copy(world)
            parts.unet = copy.deepcopy(world.unet)
            data = ForgetData.build(parts, sets["target"]["train"], ft.references, ft.seed)
            keep = ForgetData.build(parts, sets["preserve"]["train"], ft.references, ft.seed + 1) \
                if ft.preserve_weight > 0 else None
            t0 = time.perf_counter()
            method = build_method("ant", parts, data, ft, params.localize, None, keep=keep)
            t_mask = time.perf_counter() - t0
            hist = []
            for s in range(ft.steps):
                hist.append(method.step(s))
            after = rates(parts)
            label = f"gamma={gamma:g} t'={split}/{ft.ant_ddim_steps}"
            histories[label] = method.mask_history
            results.append({"gamma": gamma, "split_step": split, "t_split": method._t_split,
                            "mask_size": method.mask_history[-1] if method.mask_history else 0,
                            "maps": len(method.mask_history), "mask_seconds": t_mask,
                            "train_seconds": time.perf_counter() - t0 - t_mask,
                            "l_erase_first": hist[0].get("l_erase"), "l_erase_last": hist[-1].get("l_erase"),
                            "target_rate": after["target"], "preserve_rate": after["preserve"]})
            print(label, results[-1], flush=True)

    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ant_sweep.json").write_text(json.dumps({"base": base, "runs": results, "mask_history": histories},
                                                     indent=1))
    lines = [f"# ANT sweep ({a.steps} steps; base target rate {base['target']:.2f}, preserve {base['preserve']:.2f})",
             "", "| gamma | t' | t'_train | mask | L_erase first -> last | target | preserve |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['gamma']:g} | {r['split_step']} | {r['t_split']} | {r['mask_size']} | "
                     f"{r['l_erase_first']:.4f} -> {r['l_erase_last']:.4f} | {r['target_rate']:.2f} | "
                     f"{r['preserve_rate']:.2f} |")
    (a.out / "ant_sweep.md").write_text("\n".join(lines) + "\n")
    if histories:
        first = next(iter(histories))
        plot_mask_history(histories[first], a.out / "ant_mask_history.png", f"ANT saliency on the world ({first})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
