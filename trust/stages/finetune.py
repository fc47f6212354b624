"""`trust finetune`: selective fine-tuning from the localised mask; writes the weights delta.

With finetune.to_bar (the default) training checks the validation prompts as it goes, stops at
the bar and adapts when it is not held (trust/methods/stopping.py); when the budget (steps,
max_seconds) runs out first the stage fails, its MLflow run FAILED, and no delta is written.
Checkpoints (safetensors) every `checkpoint_every` steps; a killed run resumes from the last
one when its settings, prompts, mask and base model are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from rich.console import Console

from trust.config import Params
from trust.delta import save_delta
from trust.methods.data import ForgetData
from trust.methods.data import preserve_data as build_preserve_data
from trust.methods.loop import build_method, train
from trust.methods.stopping import BarCheck, BarNotReached, BarState, ValGroup
from trust.metrics.detection import detected
from trust.models import load_model
from trust.models.loading import base_unet_state
from trust.stages import localize, paths, prompts
from trust.tracking import stage_run
from trust.utils.fs import staged_dir, write_text_atomic
from trust.utils.safetensors_io import load_tensors, save_tensors, write_json

console = Console(stderr=True)
CURVE_KEYS = ("loss", "l_prev", "l_reg", "l_keep", "l_retain", "mask_size", "jaccard", "reestimate_s",
              "l_preserve", "l_erase", "l_uncond_early", "l_uncond_late", "ant_maps",  # ANT terms
              "val_target", "val_worst_drop", "keep_weight", "lr",  # erase-to-a-bar checks
              "val_target_clean", "val_target_attacked",  # ... with finetune.adversarial.check
              "adv_s", "adv_obj_start", "adv_obj_end", "adv_pool")  # adversarial erasure: the inner attack


def _digest(params: Params, fingerprint: str, sets: dict, mask: dict) -> str:
    h = hashlib.sha256()
    h.update(params.finetune.model_dump_json().encode())
    h.update(params.localize.model_dump_json().encode())
    h.update(fingerprint.encode())
    h.update(json.dumps([sets["target"]["train"], sets["preserve"]["train"]], sort_keys=True).encode())
    for k in sorted(mask):
        h.update(k.encode() + mask[k].numpy().tobytes())
    return h.hexdigest()[:16]


def curves_plot(history: list[dict], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    steps = [h["step"] for h in history]
    nan = float("nan")
    axes[0].plot(steps, [h.get("l_prev", nan) for h in history], label="L_prev")
    axes[0].plot(steps, [h.get("loss", nan) for h in history], label="total", alpha=0.7)
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(steps, [h.get("mask_size", nan) for h in history])
    axes[1].set_title("mask size (neurons)")
    jac = [(h["step"], h["jaccard"]) for h in history if "jaccard" in h]
    if jac:
        axes[2].plot(*zip(*jac), marker="o")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("mask drift: Jaccard with previous mask")
    checks = [h for h in history if "val_target" in h]
    if checks:
        cs = [h["step"] for h in checks]
        axes[3].plot(cs, [h["val_target"] for h in checks], marker="o", label="val target rate")
        kd = [(h["step"], h["val_worst_drop"]) for h in checks if "val_worst_drop" in h]  # kept_every: not every check
        if kd:
            axes[3].plot(*zip(*kd), marker="s", label="worst kept drop")
        if any("val_target_attacked" in h for h in checks):
            axes[3].plot(cs, [h.get("val_target_attacked", nan) for h in checks], marker="^",
                         label="val target, attacked (inner attack)")
        axes[3].legend(fontsize=7)
    axes[3].set_title("erase to a bar: validation checks")
    for ax in axes:
        ax.set_xlabel("step")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def preserve_data(parts, rows: list[dict], ft) -> ForgetData:
    """The stage's preservation data; the warning about unused prompts goes to the console."""
    return build_preserve_data(parts, rows, ft, warn=lambda m: console.print(f"[yellow]{m}"))


def val_groups(params: Params, root: Path, sets: dict) -> list[ValGroup]:
    """The validation prompts of the target and of every kept concept, each with its judge: the
    world classifier's labels on the world; on Stable Diffusion the evaluate detector, target only
    (kept concepts are world labels; SD's cost of erasure is FID, not checked while training)."""
    val = {role: sets[role].get("val") or sets[role]["train"] for role in ("target", "preserve")}
    concept = params.concept
    target = [r["prompt"] for r in val["target"]]
    if params.uses_world:
        from trust.world.classifier import ConceptClassifier

        classifier = ConceptClassifier.load(root / params.world.classifier_dir)

        def judge(want):
            return lambda images: detected(classifier.predict(images.float()), want)

        groups = [ValGroup("target", target, judge(concept.detect), kept=False)]
        from trust.concepts import shows
        from trust.stages.evaluate import keep_name

        for want in concept.keep:
            showing = [r["prompt"] for r in val["preserve"] if shows(r["labels"], want)]
            if showing:
                groups.append(ValGroup(keep_name(want), showing, judge(want)))
        return groups
    from trust.detectors import build_detector

    det = build_detector(params.evaluate.detector, root, device=params.model.device, clip_dir=params.model.clip_dir)
    return [ValGroup("target", target, det.detect, kept=False)]


def _adversarial_summary(ft, history: list[dict]) -> dict | None:
    """What adversarial erasure cost and found: inner attacks, their seconds, objective before/after."""
    if not ft.adversarial.enabled:
        return None
    runs = [h for h in history if "adv_s" in h]
    return {"attacks": len(runs), "seconds": sum(h["adv_s"] for h in runs),
            "objective_start": [h["adv_obj_start"] for h in runs], "objective_end": [h["adv_obj_end"] for h in runs],
            "prompts": [h["adv_prompt"] for h in runs if "adv_prompt" in h][-8:]}


def run(params: Params, root: Path, progress: bool = True) -> dict:
    started = time.time()  # the stage run's start time in MLflow: the work's, not the logging's
    ft = params.finetune
    torch.manual_seed(ft.seed)
    parts = load_model(params.model.base, device=params.model.device, sample_batch=params.model.sample_batch,
                       dtype=params.model.dtype)
    fingerprint = parts.fingerprint()
    base_state = base_unet_state(parts)  # the folder's tensors, read when the delta is written: no second UNet
    sets = prompts.load(root)
    # A method that localises (TRUST) starts from the localize stage's mask; the others build their own.
    mask = localize.load_mask(root) if ft.method.starts_from_localize else {}
    data = ForgetData.build(parts, sets["target"]["train"], ft.references, ft.seed)
    method = build_method(parts, data, ft, params.localize, keep=lambda: preserve_data(parts, sets["preserve"]["train"], ft),
                          initial_mask=mask or None, resources=localize.scorer_resources(params))

    ckpt_dir = root / paths.FINETUNE_CHECKPOINTS
    digest = _digest(params, fingerprint, sets, mask)
    start, history, spent, meta = 0, [], 0.0, {}
    meta_path = ckpt_dir / "state.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("digest") != digest:
            meta = {}
    bar = None
    if ft.to_bar.enabled:  # built before a checkpoint loads: its base rates are the starting model's
        gates = params.registry.gates
        bar = BarCheck(method, val_groups(params, root, sets), ft.to_bar, gates.max_target_rate,
                       gates.max_preservation_drop, seed=ft.seed, guidance=params.evaluate.guidance,
                       state=BarState.restore(meta["bar"]) if meta.get("bar") else None,
                       log=lambda m: console.print(f"[cyan]to_bar: {m}"),
                       attacked=ft.adversarial.enabled, attacked_stops=ft.adversarial.check)
    if meta:
        method.load_state_tensors(load_tensors(ckpt_dir / "state.safetensors"))
        start, history, spent = meta["step"], meta["history"], meta.get("wall_s", 0.0)
        if bar is not None and meta.get("bar"):
            bar.resume()
        console.print(f"[cyan]resuming fine-tuning from step {start}")
    t0 = time.perf_counter()

    def checkpoint(done: int, hist: list[dict]) -> None:
        save_tensors(method.state_tensors(), ckpt_dir / "state.safetensors")
        write_json({"step": done, "history": hist, "digest": digest, "wall_s": spent + time.perf_counter() - t0,
                    "bar": bar.state.record() if bar else None}, meta_path)

    budget = None if ft.max_seconds is None else max(ft.max_seconds - spent, 1e-3)
    result = train(method, ft.steps, start=start, history=history, checkpoint=checkpoint,
                   checkpoint_every=ft.checkpoint_every, progress=progress, max_seconds=budget,
                   check=bar, check_every=ft.to_bar.check_every)
    history = result.history
    seconds = time.perf_counter() - t0 + spent
    if bar is not None:
        for c in bar.state.checks:  # the check's numbers on the step they were taken at
            h = history[c["step"] - 1]
            h.update({k: c[k] for k in ("val_target", "val_worst_drop", "keep_weight", "lr", "val_target_clean",
                                        "val_target_attacked") if k in c})

    section = {"finetune": ft.model_dump(mode="json"), "localize": params.localize.model_dump(mode="json")}
    with stage_run("finetune", section, root, base_fingerprint=fingerprint, started=started) as run_:
        if bar is not None and not bar.state.reached:
            # a failed run, logged as one: its curves and checks are in MLflow; no delta is written
            for h in history:
                run_.log_metrics({k: h[k] for k in CURVE_KEYS if k in h}, step=h["step"])
            if method.finished:  # a training-free method (conceptprune, uce, rece): more steps change nothing
                raise BarNotReached(
                    f"finetune: {ft.method.name}'s one edit did not reach the bar on the validation prompts: "
                    f"{bar.report()}. Nothing was written or registered; change finetune.method's knobs (a training-"
                    "free method gains nothing from more steps), or see the check in the MLflow run")
            why = "the time budget (finetune.max_seconds) ran out" if result.out_of_time else \
                  "the step budget (finetune.steps) ran out"
            raise BarNotReached(
                f"finetune: {why} before the bar was reached on the validation prompts: {bar.report()}. Nothing "
                "was written or registered; raise finetune.steps / finetune.max_seconds, or see the checks in "
                "the MLflow run (val_target, val_worst_drop)")
        with staged_dir(root / paths.FINETUNE_DIR) as out:
            name = ft.method.name
            summary = save_delta(base_state, parts.unet.state_dict(), out / "delta.safetensors",
                                 {"base_fingerprint": fingerprint, "method": name, "concept": params.concept.name})
            knobs = ", ".join(f"{k}={v}" for k, v in ft.method.model_dump().items() if k != "name")[:90]
            curves_plot(history, out / "curves.png", f"{name} on '{params.concept.name}' ({knobs})")
        reest = [h["reestimate_s"] for h in history if "reestimate_s" in h]
        metrics = {
            "method": ft.method.name, "steps": len(history), "resumed_from": start,
            "trainable_parameters": method.trainable_parameters(),
            "final_l_prev": history[-1].get("l_prev"), "final_mask_size": history[-1].get("mask_size"),
            "delta_tensors": summary["tensors"], "delta_parameters": summary["parameters"],
            "seconds": seconds, "reestimate_seconds": sum(reest),
            "adversarial": _adversarial_summary(ft, history),
            "bar": None if bar is None else {**bar.state.record(), "check_seconds": bar.seconds,
                                             "base_val": bar.base, "stop_target": bar.max_target,
                                             "stop_drop": bar.max_drop},
        }
        write_json(metrics, root / paths.METRICS / "finetune.json")
        write_text_atomic(root / paths.METRICS / "finetune_curve.csv", "step," + ",".join(CURVE_KEYS) + "\n"
                          + "".join(f"{h['step']}," + ",".join(str(h.get(k, "")) for k in CURVE_KEYS) + "\n"
                                    for h in history))
        for h in history:
            run_.log_metrics({k: h[k] for k in CURVE_KEYS if k in h}, step=h["step"])
        run_.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        run_.log_artifact(root / paths.FINETUNE_DIR)
    if ckpt_dir.exists():  # finished: the checkpoint has served its purpose
        import shutil

        shutil.rmtree(ckpt_dir)
    return metrics
