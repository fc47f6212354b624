"""Side-by-side benchmark of the unlearning methods on one world concept, one seed, one run.

For each configuration (TRUST-CIP, TRUST-CSR, TRUST with a static mask, ESD-x, ESD-u, SalUn,
ConceptPrune, full fine-tuning, UCE, RECE in METHOD_RUNS; ANT and ANT+fusion in ANT_RUNS) it measures:
- steps and wall-clock to reach the joint bar: target detection rate <= `bar` by the world
  classifier on held-out target prompts *and* every kept concept within `max_drop` of the base
  model's rate on held-out preservation prompts, both checked every `check_every` steps on small
  fixed-seed samples (checking time is not counted) and, when a check meets it, confirmed on the
  larger end-of-run sample (`BenchSettings.confirm`); a method that erases the target by destroying
  its neighbours does not reach it. The erasure-only time (target alone) stays as its own columns;
- total wall-clock (method set-up, incl. TRUST's initial localisation and SalUn's mask, plus
  training steps; the shared reference images are made once and not counted);
- peak memory above the run's start: torch.cuda.max_memory_allocated on GPU, else the peak
  resident set size sampled every 5 ms (/proc/self/statm);
- trainable parameters (entries with requires_grad) and weights actually changed;
- erasure (target detection rate) and preservation (mean detection rate of kept concepts) on
  a larger held-out sample at the end; ratios against SalUn; TRUST's mask re-estimation share.
Every row trains through the one training loop (trust/methods/loop.py): the weights are
materialised before each check (ANT+fusion fuses its LoRA into the UNet in closed form); the
latest materialisation's time counts once in time to bar and total (`sync_s`).
Writes methods.json, methods.md and methods.png (or NAME.*) into `out`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.lib.results import write_results
from bench.lib.samples import FixedSamples
from trust.config import FinetuneParams, Params
from trust.methods.data import ForgetData, preserve_data
from trust.methods.loop import STOP, Resources, build_method, train
from trust.metrics.detection import detection_rate
from trust.utils.memory import PeakMemory


@dataclass
class Run:
    label: str
    method: str  # finetune.method.name (registry name)
    knobs: dict = field(default_factory=dict)  # the method's own (finetune.method.*)
    overrides: dict = field(default_factory=dict)  # shared finetune fields (lr, preserve_weight, ...)

    def finetune(self, base: FinetuneParams, **more) -> FinetuneParams:
        """`base` with this row's method, knobs and overrides (validated); the knobs merge into
        base's own method section when it is the same method (params.yaml's TRUST settings)."""
        return base.updated(method={"name": self.method, **self.knobs}, **{**self.overrides, **more})

    def settings(self) -> dict:
        return {**self.knobs, **self.overrides}


# Baseline settings for the 16px world (their papers' lr are for SD v1.4 and ~1000 steps);
# the baselines run without TRUST's optional preservation term, as published.
METHOD_RUNS = [
    Run("TRUST-CIP", "trust", {"loss": "cip"}),
    Run("TRUST-CSR", "trust", {"loss": "csr"}),
    Run("TRUST-static", "trust", {"loss": "cip", "dynamic": False}),
    Run("ESD-x", "esd", {"variant": "x"}, {"lr": 1e-3, "preserve_weight": 0.0}),
    Run("ESD-u", "esd", {"variant": "u"}, {"lr": 5e-4, "preserve_weight": 0.0}),
    Run("SalUn", "salun", {}, {"lr": 5e-4, "preserve_weight": 0.0}),
    Run("ConceptPrune", "conceptprune", {}, {"preserve_weight": 0.0}),
    Run("full", "full", {}, {"lr": 5e-4, "preserve_weight": 0.0}),
    # closed form, training-free (issue 15): their own defaults (trust/methods/uce, trust/methods/rece)
    Run("UCE", "uce", {}, {"preserve_weight": 0.0}),
    Run("RECE", "rece", {}, {"preserve_weight": 0.0}),
]

# ANT rows (issue 6): ANT with its intersected saliency mask (over attn2: on the world the UNet-wide
# mask hurt every shape, see the tuning log), and ANT+fusion (one
# concept's LoRA on attn2 to_k/to_v trained with the ANT loss, fused in closed form, Eq. 7).
# Settings tuned on the world (bench/results/tries/ant_tuning.md).
ANT_RUNS = [
    Run("ANT", "ant", {"scope": "attn2", "gamma": 1e-7}, {"lr": 5e-3, "preserve_weight": 30.0}),
    Run("ANT+fusion", "ant_fusion", {}, {"lr": 5e-3, "preserve_weight": 0.0}),
]
# `trust bench` / bench/methods.py without --runs: every row of the README table, in one run.
DEFAULT_RUNS = METHOD_RUNS + ANT_RUNS


@dataclass
class BenchSettings:
    steps: int = 200
    check_every: int = 10
    bar: float = 0.10
    max_drop: float = 0.10  # the joint bar: every kept concept within this of base (the preservation gate)
    check_images: int = 16  # fixed-seed sample for the bar check (target, and each kept concept)
    eval_images: int = 48  # final erasure sample (held-out target prompts)
    keep_images: int = 16  # final sample per kept concept
    sample_steps: int = 10
    guidance: float = 4.0
    references: int | None = None  # None: finetune.references
    # a bar met on the check's few images is confirmed on the larger end-of-run sample (eval_images target,
    # keep_images per kept concept) before it counts: 16 images admit one, and ESD-x "met" the bar at
    # step 20 with 0.31 of 48 other held-out images still showing circles (measured)
    confirm: bool = True
    stop_at_bar: bool = True
    seed: int = 0

    @classmethod
    def quick(cls, steps: int | None = None) -> "BenchSettings":
        return cls(steps=steps or 4, check_every=2, check_images=4, eval_images=4, keep_images=2, sample_steps=4,
                   references=4)


def bar_status(rate: float, keep: dict[str, float], base_keep: dict[str, float], bar: float,
               max_drop: float) -> tuple[bool, bool]:
    """(erased: target rate <= bar, joint: erased and every kept concept at most max_drop below base)."""
    erased = rate <= bar + 1e-9
    return erased, erased and all(base_keep[k] - v <= max_drop + 1e-9 for k, v in keep.items())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_bench(parts, classifier, params: Params, runs: list[Run] | None = None,
              settings: BenchSettings | None = None, out: Path | None = None, progress: bool = True,
              log=print, name: str = "methods") -> dict:
    """Benchmark `runs` on `parts` (left unchanged). Returns the results dict (also written to `out`)."""
    from trust.concepts import build_prompt_sets

    runs = runs or DEFAULT_RUNS
    s = settings or BenchSettings()
    device = parts.unet.device
    concept = params.concept
    sets = build_prompt_sets(concept, params.prompts)
    samples = FixedSamples(concept, sets, s)

    def measure(p) -> tuple[float, float, dict]:
        erasure = detection_rate(p, classifier, *samples.eval, concept.detect, s.sample_steps, s.guidance)
        keep = {"/".join(f"{h}:{v}" for h, v in w.items()): detection_rate(p, classifier, pr, sd, w, s.sample_steps,
                                                                           s.guidance) for w, pr, sd in samples.keep}
        return erasure, (sum(keep.values()) / len(keep) if keep else float("nan")), keep

    base_state = {k: v.detach().clone() for k, v in parts.unet.state_dict().items()}
    references = s.references or params.finetune.references
    t0 = time.perf_counter()
    data = ForgetData.build(parts, sets["target"]["train"], references, params.finetune.seed)
    keep_data = preserve_data(parts, sets["preserve"]["train"], params.finetune, references, warn=log)
    data_s = time.perf_counter() - t0
    base_erasure, base_pres, base_keep = measure(parts)

    def check_keep(p) -> dict[str, float]:
        return {"/".join(f"{h}:{v}" for h, v in w.items()): detection_rate(p, classifier, pr, sd, w, s.sample_steps,
                                                                           s.guidance) for w, pr, sd in samples.check_keep}

    base_check_keep = check_keep(parts)
    log(f"base model: target rate {base_erasure:.2f}, kept concepts {base_pres:.2f} (references in {data_s:.1f}s)")

    rows = []
    for run in runs:
        ft = run.finetune(params.finetune, steps=s.steps, references=references)
        p = copy.copy(parts)
        p.unet = copy.deepcopy(parts.unet)
        steps_to_bar = time_to_bar = steps_to_erasure = time_to_erasure = None
        checks: list[dict] = []
        with PeakMemory(device) as mem:
            _sync(device)
            t_setup = time.perf_counter()
            # set-up counts: TRUST's initial localisation (the localize stage's work), SalUn's mask, ...
            method = build_method(p, data, ft, params.localize, keep=keep_data,
                                  resources=Resources(classifier=classifier, detect=concept.detect))
            _sync(device)
            setup_s = time.perf_counter() - t_setup

            def check(done: int, so_far) -> bool:
                nonlocal steps_to_bar, time_to_bar, steps_to_erasure, time_to_erasure
                # the latest materialisation (ANT+fusion's fusion) counts once in time to bar and total
                spent = setup_s + so_far.train_s + so_far.materialise_s
                rate = detection_rate(p, classifier, samples.check[0], samples.check[1], concept.detect,
                                      s.sample_steps, s.guidance)
                kept = check_keep(p)
                erased, joint = bar_status(rate, kept, base_check_keep, s.bar, s.max_drop)
                check = {"step": done, "rate": rate, "keep": kept, "seconds": spent, "joint": joint}
                new = (erased and steps_to_erasure is None) or (joint and steps_to_bar is None)
                if s.confirm and new:  # what the check saw, on the larger held-out sample (time not counted)
                    c_rate, _, c_keep = measure(p)
                    c_erased, c_joint = bar_status(c_rate, c_keep, base_keep, s.bar, s.max_drop)
                    check["confirm"] = {"rate": c_rate, "keep": c_keep, "erased": c_erased, "joint": c_joint}
                    erased, joint = erased and c_erased, joint and c_joint
                checks.append(check)
                if steps_to_erasure is None and erased:
                    steps_to_erasure, time_to_erasure = done, spent
                if steps_to_bar is None and joint:
                    steps_to_bar, time_to_bar = done, spent
                    return STOP if s.stop_at_bar else None
                return None

            result = train(method, ft.steps, check=check, check_every=s.check_every)
        step_s, sync_s, done = result.train_s, result.materialise_s, result.steps_run
        reest_s = sum(h.get("reestimate_s", 0.0) for h in result.history)
        erasure, preservation, keep = measure(p)
        tuned = p.unet.state_dict()
        changed = int(sum(int((tuned[k] != v).sum()) for k, v in base_state.items()))
        row = {
            "label": run.label, "method": run.method, "settings": run.settings(),
            "lr": ft.lr, "steps_run": done, "steps_to_bar": steps_to_bar, "time_to_bar_s": time_to_bar,
            "steps_to_erasure": steps_to_erasure, "time_to_erasure_s": time_to_erasure,
            "setup_s": setup_s, "train_s": step_s, "total_s": setup_s + step_s + sync_s, "sync_s": sync_s,
            "s_per_step": step_s / max(done, 1), "peak_memory_bytes": mem.bytes,
            "trainable_parameters": method.trainable_parameters(), "changed_parameters": changed,
            "erasure_target_rate": erasure, "preservation": preservation, "keep": keep,
            "reestimate_share": (reest_s / step_s) if run.method == "trust" and step_s > 0 else None,
            "checks": checks,
        }
        rows.append(row)
        log(f"{run.label:13s} joint bar at step {steps_to_bar} ({_fmt(time_to_bar)}s; erasure alone at {steps_to_erasure}), "
            f"total {row['total_s']:.1f}s, "
            f"target {erasure:.2f}, kept {preservation:.2f}, peak {mem.bytes / 2**20:.1f} MiB")
        del method, p

    salun = next((r for r in rows if r["method"] == "salun"), None)
    for r in rows:
        r["vs_salun"] = {k: _ratio(r[k], salun[k]) if salun else None
                         for k in ("steps_to_bar", "time_to_bar_s", "total_s", "peak_memory_bytes")}
    result = {
        "concept": concept.name, "detect": concept.detect, "bar": s.bar, "seed": s.seed,
        "device": str(device), "memory": mem.kind, "torch_threads": torch.get_num_threads(),
        "settings": s.__dict__, "finetune_base": params.finetune.model_dump(mode="json"),
        "localize": params.localize.model_dump(mode="json"),
        "max_drop": s.max_drop,
        "base": {"target_rate": base_erasure, "preservation": base_pres, "keep": base_keep, "check_keep": base_check_keep,
                 "references_s": data_s},
        "runs": rows,
    }
    if out is not None:
        write_results(result, Path(out), name, markdown, plot)
    return result


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"# Method benchmark: erase '{result['concept']}' (world, seed {result['seed']}, one run)",
        "",
        f"Bar (joint): target detection rate <= {result['bar']} on {s['check_images']} fixed-seed held-out target images "
        f"and every kept concept within {result.get('max_drop', 0.1)} of base on {s['check_images']} held-out images "
        f"each, checked every {s['check_every']} steps (check time not counted)"
        + (f", and confirmed on the {s['eval_images']} + {s['keep_images']}-per-kept-concept end sample when the check "
           "meets it" if s.get("confirm") else "") + f"; at most {s['steps']} steps. "
        "Erasure only: the target alone. "
        f"Erasure/preservation: {s['eval_images']} held-out target images, {s['keep_images']} per kept concept. "
        f"Device {result['device']}, torch threads {result['torch_threads']}, memory = {result['memory']}. "
        f"Base model: target rate {result['base']['target_rate']:.2f}, preservation {result['base']['preservation']:.2f}.",
        "",
        "| method | lr | steps to bar | time to bar (s) | erasure only: steps | erasure only: time (s) | total (s) "
        "| s/step | peak mem (MiB) | trainable params "
        "| changed params | target rate | preservation | mask re-est. share | steps vs SalUn | time vs SalUn "
        "| memory vs SalUn |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        v = r["vs_salun"]
        lines.append(
            f"| {r['label']} | {r['lr']:g} | {_fmt(r['steps_to_bar'], 'd')} | {_fmt(r['time_to_bar_s'])} "
            f"| {_fmt(r.get('steps_to_erasure'), 'd')} | {_fmt(r.get('time_to_erasure_s'))} "
            f"| {r['total_s']:.1f} | {r['s_per_step']:.3f} | {r['peak_memory_bytes'] / 2**20:.1f} "
            f"| {r['trainable_parameters']:,} | {r['changed_parameters']:,} | {r['erasure_target_rate']:.2f} "
            f"| {r['preservation']:.2f} | {_fmt(r['reestimate_share'], '.0%')} | {_fmt(v['steps_to_bar'], '.2f')} "
            f"| {_fmt(v['time_to_bar_s'], '.2f')} | {_fmt(v['peak_memory_bytes'], '.2f')} |")
    lines += ["", "'-': bar not reached within the step budget (or no SalUn run to compare with). "
                  "Total = method set-up (TRUST: initial localisation; SalUn: its saliency mask) + training steps.", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    labels = [r["label"] for r in runs]
    panels = [
        ("time to bar (s); hatched: bar not reached, total shown", [r["time_to_bar_s"] or r["total_s"] for r in runs],
         [r["time_to_bar_s"] is None for r in runs]),
        ("steps to bar", [r["steps_to_bar"] or r["steps_run"] for r in runs], [r["steps_to_bar"] is None for r in runs]),
        ("peak memory (MiB)", [r["peak_memory_bytes"] / 2**20 for r in runs], None),
        ("trainable parameters", [max(r["trainable_parameters"], 1) for r in runs], None),
        ("target detection rate (lower = erased)", [r["erasure_target_rate"] for r in runs], None),
        ("kept-concept detection rate (higher = preserved)", [r["preservation"] for r in runs], None),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    for ax, (title, vals, hatch) in zip(axes.flat, panels):
        bars = ax.bar(range(len(vals)), vals, color=["#c0392b" if r["method"] == "trust" else "#7f8c8d" for r in runs])
        for b, h in zip(bars, hatch or []):
            if h:
                b.set_hatch("//")
                b.set_alpha(0.5)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        if title.startswith("trainable"):
            ax.set_yscale("log")
    axes.flat[4].axhline(result["bar"], color="k", ls="--", lw=0.8)
    fig.suptitle(f"erasing '{result['concept']}' on the world: one seed, one run", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def select_runs(names: str | None) -> list[Run]:
    if not names:
        return DEFAULT_RUNS
    want = [n.strip() for n in names.split(",") if n.strip()]
    known = {r.label.lower(): r for r in DEFAULT_RUNS}
    missing = [n for n in want if n.lower() not in known]
    if missing:
        raise ValueError(f"unknown benchmark run(s) {missing}; runs: {', '.join(r.label for r in DEFAULT_RUNS)}")
    return [known[n.lower()] for n in want]


def load_world(params_path: Path, root: Path, what: str):
    """(params, base model, world classifier) for a benchmark whose detector is the world's classifier."""
    from trust.config import load_params
    from trust.models import load_model
    from trust.world.classifier import ConceptClassifier

    params = load_params(params_path, root=root)  # paths resolved against the project root
    if not params.uses_world:
        raise ValueError(f"{what} needs the world (model.base = world.model_dir): its classifier is the detector")
    parts = load_model(params.model.base, device=params.model.device)
    classifier = ConceptClassifier.load(params.world.classifier_dir).to(parts.unet.device)
    return params, parts, classifier


def run_from_params(params_path: Path, out: Path, steps: int | None = None, quick: bool = False,
                    check_every: int | None = None, runs: str | None = None, stop_at_bar: bool = True,
                    root: Path | None = None, log=print, name: str = "methods",
                    sample_steps: int | None = None) -> dict:
    """Load params.yaml, the base model and the world classifier, then `run_bench`."""
    root = root or Path.cwd()
    params, parts, classifier = load_world(params_path, root, "the method benchmark")
    settings = BenchSettings.quick(steps) if quick else BenchSettings(steps=steps or BenchSettings.steps)
    if check_every:
        settings.check_every = check_every
    settings.stop_at_bar = stop_at_bar
    if sample_steps:
        settings.sample_steps = sample_steps
    return run_bench(parts, classifier, params, select_runs(runs), settings, out, log=log, name=name)
