"""ANT sweep on the world: `python bench/ant_sweep.py [--quick]`.

For each (ant_gamma, ant_split_step) of the grid: builds ANT from params.yaml's finetune section
(method forced to `ant`), records the saliency-mask history (active parameters vs intersected
maps, plotted), trains `--steps` steps and measures the world classifier's detection rate of the
target concept on held-out target prompts and of concept.keep on the preservation prompts, before and after.
Writes bench/results/ant_sweep.{json,md} and ant_mask_history.png.

`--tune "lr=0.005 steps=600 preserve_weight=30; lr=0.01 ..."` instead trains each listed
finetune-override set (method `ant`) through the method benchmark's measurement
(bench.lib.methods.run_bench: erasure on held-out target prompts, each kept concept,
checks every `--check-every` steps, world eval sampling: 20 DDIM steps, guidance 4) and appends
one JSON line per try to bench/results/tries/ant_tuning.jsonl (the log behind ant_tuning.md).

`--tprime --splits 30,40,43,47,49 --set "..." --steps N` trains one ANT model per t'
(ant_split_step) with the same measurement and writes ant_tprime.{json,md,png}: erasure and
preservation per t' in one plot.
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
    ap.add_argument("--tune", default=None, help="';'-separated finetune override sets 'k=v k=v' (method ant)")
    ap.add_argument("--check-every", type=int, default=50, help="--tune: erasure check every N steps")
    ap.add_argument("--note", default="", help="--tune: free text stored with each try")
    ap.add_argument("--tprime", action="store_true",
                    help="t' sweep: for each --splits value, train with --set overrides (+ --steps) through the "
                         "benchmark measurement; writes ant_tprime.{json,md,png} (erasure and preservation per t')")
    ap.add_argument("--set", default="", help="--tprime: finetune overrides 'k=v k=v' shared by every t'")
    a = ap.parse_args(argv)
    if a.tune:
        return tune(a)
    if a.tprime:
        return tprime(a)
    if a.quick:
        a.gammas, a.splits, a.steps, a.max_maps, a.prompts = "1e-5", "43", 4, 8, 4

    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    from trust.concepts import build_prompt_sets
    from trust.config import load_params
    from trust.methods.ant.saliency import plot_mask_history
    from trust.methods.data import ForgetData, preserve_data
    from trust.methods.loop import build_method, train
    from trust.models import load_model
    from trust.sampling import generate
    from trust.metrics.detection import detected
    from trust.world.classifier import ConceptClassifier

    params = load_params(a.params, root=ROOT)
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
            ft = params.finetune.updated(method={"name": "ant", "gamma": gamma, "split_step": split,
                                                 "max_maps": a.max_maps}, steps=a.steps, **({"lr": a.lr} if a.lr else {}))
            parts = copy.copy(world)
            parts.unet = copy.deepcopy(world.unet)
            data = ForgetData.build(parts, sets["target"]["train"], ft.references, ft.seed)
            t0 = time.perf_counter()
            method = build_method(parts, data, ft, params.localize,
                                  keep=lambda: preserve_data(parts, sets["preserve"]["train"], ft))
            t_mask = time.perf_counter() - t0
            hist = train(method, ft.steps).history
            after = rates(parts)
            label = f"gamma={gamma:g} t'={split}/{ft.method.ddim_steps}"
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


def parse_overrides(text: str) -> list[dict]:
    """'lr=0.005 steps=600; lr=0.01' -> [{'lr': 0.005, 'steps': 600}, {'lr': 0.01}] (values read as YAML)."""
    import yaml

    def value(v: str):
        for cast in (int, float):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return cast(v)
            except ValueError:
                pass
        return yaml.safe_load(v)

    out = []
    for chunk in text.split(";"):
        if chunk.strip():
            out.append({k: value(v) for k, v in (kv.split("=", 1) for kv in chunk.split())})
    return out


def _knobs(ov: dict) -> dict:
    """Overrides as written on the command line: ANT's knobs with or without their old `ant_` prefix."""
    return {k.removeprefix("ant_"): v for k, v in ov.items()}


def tune(a) -> int:
    """Train each override set with run_bench and append the measurements to ant_tuning.jsonl."""
    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    from trust.config import load_params
    from bench.lib.methods import BenchSettings, Run, run_bench
    from trust.models import load_model
    from trust.world.classifier import ConceptClassifier

    params = load_params(a.params, root=ROOT)
    world = load_model(ROOT / params.world.model_dir)
    clf = ConceptClassifier.load(ROOT / params.world.classifier_dir)
    sets = parse_overrides(a.tune)
    (a.out / "tries").mkdir(parents=True, exist_ok=True)
    log = a.out / "tries" / "ant_tuning.jsonl"  # the record of tries
    for ov in sets:
        steps = int(ov.pop("steps", a.steps))
        builder = ov.pop("builder", None)  # e.g. builder=ant_fusion: the LoRA + closed-form fusion row
        label = ("ANT+fusion: " if builder == "ant_fusion" else "") + " ".join(f"{k}={v}" for k, v in ov.items()) \
            + f" steps={steps}"
        settings = BenchSettings(steps=steps, check_every=a.check_every, stop_at_bar=False, sample_steps=20,
                                 eval_images=48, keep_images=16)
        t0 = time.perf_counter()
        res = run_bench(world, clf, params, [Run(label, builder or "ant", {}, _knobs(ov))], settings)
        r = res["runs"][0]
        rec = {"label": label, "overrides": ov, "builder": builder, "steps": steps, "note": a.note, "base": res["base"],
               "target_rate": r["erasure_target_rate"], "preservation": r["preservation"], "keep": r["keep"],
               "checks": r["checks"], "steps_to_bar": r["steps_to_bar"], "train_s": r["train_s"],
               "setup_s": r["setup_s"], "trainable_parameters": r["trainable_parameters"],
               "changed_parameters": r["changed_parameters"], "wall_s": time.perf_counter() - t0,
               "torch_threads": torch.get_num_threads()}
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{label}: target {r['erasure_target_rate']:.2f} keep {r['keep']} checks "
              f"{[(c['step'], round(c['rate'], 2)) for c in r['checks']]}", flush=True)
        render_tuning(log, a.out / "tries" / "ant_tuning.md")
    return 0


def tprime(a) -> int:
    """Erasure and preservation per t' (ant_split_step), everything else fixed (--set, --steps)."""
    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    from trust.config import load_params
    from bench.lib.methods import BenchSettings, Run, run_bench
    from trust.models import load_model
    from trust.world.classifier import ConceptClassifier

    params = load_params(a.params, root=ROOT)
    world = load_model(ROOT / params.world.model_dir)
    clf = ConceptClassifier.load(ROOT / params.world.classifier_dir)
    base_ov = parse_overrides(a.set)[0] if a.set.strip() else {}
    builder = base_ov.pop("builder", None)  # builder=ant_fusion: sweep the LoRA + closed-form fusion variant
    splits = [int(x) for x in a.splits.split(",") if x]
    runs = [Run(f"t'={k}", builder or "ant", {}, _knobs({**base_ov, "split_step": k})) for k in splits]
    settings = BenchSettings(steps=a.steps, check_every=a.check_every, stop_at_bar=False, sample_steps=20,
                             eval_images=48, keep_images=16)
    res = run_bench(world, clf, params, runs, settings)
    from trust.methods.ant.method import split_timestep

    rows = []
    for k, r in zip(splits, res["runs"]):
        ft = runs[0].finetune(params.finetune)
        rows.append({"split_step": k, "t_split_train": split_timestep(world.scheduler, k, ft.method.ddim_steps),
                     "target_rate": r["erasure_target_rate"], "preservation": r["preservation"], "keep": r["keep"],
                     "changed_parameters": r["changed_parameters"], "checks": r["checks"], "train_s": r["train_s"]})
    out = {"overrides": base_ov, "builder": builder, "steps": a.steps, "base": res["base"], "runs": rows,
           "torch_threads": torch.get_num_threads()}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ant_tprime.json").write_text(json.dumps(out, indent=1) + "\n")
    n = runs[0].finetune(params.finetune).method.ddim_steps
    variant = "ANT+fusion (one LoRA, closed-form fusion)" if builder == "ant_fusion" else "ANT (masked)"
    lines = [f"# ANT t' sweep on the world (erase 'circle', {variant}, {a.steps} steps)", "",
             f"Settings: params.yaml finetune, method ant, with {base_ov or 'no overrides'}; t' = ant_split_step of "
             f"a {n}-step DDIM schedule (L_preserve on t >= t'_train, L_erase below). Target: 48 held-out circle "
             "images; preservation: mean over square/triangle/cross, 16 images each (20 DDIM steps, guidance 4). "
             f"Base: target {res['base']['target_rate']:.2f}, preservation {res['base']['preservation']:.2f}.", "",
             "| t' | t'_train | target rate | preservation | square | triangle | cross | changed params | train (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r["keep"]
        lines.append(f"| {r['split_step']} | {r['t_split_train']} | {r['target_rate']:.2f} | {r['preservation']:.2f} "
                     f"| {k.get('shape:square', float('nan')):.2f} | {k.get('shape:triangle', float('nan')):.2f} "
                     f"| {k.get('shape:cross', float('nan')):.2f} | {r['changed_parameters']:,} | {r['train_s']:.0f} |")
    (a.out / "ant_tprime.md").write_text("\n".join(lines) + "\n")
    plot_tprime(out, a.out / "ant_tprime.png")
    print("\n".join(lines))
    return 0


def plot_tprime(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["split_step"] for r in res["runs"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(xs, [r["target_rate"] for r in res["runs"]], "o-", color="#c0392b", label="target (circle) rate: erasure")
    ax.plot(xs, [r["preservation"] for r in res["runs"]], "s-", color="#2c7fb8", label="kept shapes rate: preservation")
    ax.axhline(0.10, color="#c0392b", ls=":", lw=0.8)
    ax.axhline(res["base"]["preservation"] - 0.10, color="#2c7fb8", ls=":", lw=0.8)
    ax.set_xlabel("t' (ant_split_step)")
    ax.set_ylabel("detection rate")
    ax.set_ylim(-0.03, 1.03)
    name = "ANT+fusion" if res.get("builder") == "ant_fusion" else "ANT"
    ax.set_title(f"{name} on the world: erasure and preservation per t' ({res['steps']} steps)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_tuning(log: Path, md: Path) -> None:
    """ant_tuning.md: every try of ant_tuning.jsonl, in order, with the settings that differ from params.yaml.

    Text in ant_tuning_notes.md (next to it), if present, is put under the title."""
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    notes = md.with_name("ant_tuning_notes.md")
    lines = ["# ANT tuning on the world (erase 'circle')", ""]
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    lines += ["Every try, in order (`python bench/ant_sweep.py --tune ...`, log: ant_tuning.jsonl). Unlisted settings: "
              "params.yaml's finetune section with method ant (ant_* defaults: t'=43/50, eta 1, lambda=(1, 0.5, 0.5), "
              "gamma 1e-5, scope unet, 4 seeds, 100 maps; batch 8, 16 references). Target: held-out circle prompts, "
              "48 images; kept: 16 images per kept shape; world eval sampling (20 DDIM steps, guidance 4). "
              "Base: target 1.00, every kept shape 1.00. Checks: circle rate on 16 fixed images every N steps.",
              "", "| # | settings | target | square | triangle | cross | min kept | checks (step: rate) | train (s) | changed "
              "| trainable | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(recs, 1):
        k = r["keep"]
        checks = ", ".join(f"{c['step']}: {c['rate']:.2f}" for c in r["checks"])
        lines.append(f"| {i} | {r['label']} | {r['target_rate']:.2f} | {k.get('shape:square', float('nan')):.2f} "
                     f"| {k.get('shape:triangle', float('nan')):.2f} | {k.get('shape:cross', float('nan')):.2f} "
                     f"| {min(k.values()):.2f} | {checks} | {r['train_s']:.0f} | {r['changed_parameters']:,} | {r['trainable_parameters']:,} "
                     f"| {r['note']} |")
    md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
