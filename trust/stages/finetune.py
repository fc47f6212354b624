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
import dataclasses
from dataclasses import dataclass
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


def keep_rows(params: Params, sets: dict) -> list[dict]:
    """The preservation training rows. Several concepts trained jointly (world): each row tagged with
    the kept concept it shows (its index in params.kept; the rest one more group), so a preservation
    batch, like a forget batch, draws batch_size rows of each (trust/methods/data.py) and every kept
    concept is held at every step."""
    rows = sets["preserve"]["train"]
    if len(params.concepts) == 1 or not params.uses_world or params.finetune.multi.mode != "joint":
        return rows
    from trust.concepts import shows

    kept = params.kept
    return [r | {"concept": next((k for k, w in enumerate(kept) if shows(r["labels"], w)), len(kept))} for r in rows]


def val_groups(params: Params, root: Path, sets: dict) -> list[ValGroup]:
    """The validation prompts of the target and of every kept concept, each with its judge: the
    world classifier's labels on the world; on Stable Diffusion the evaluate detector, target only
    (kept concepts are world labels; SD's cost of erasure is FID, not checked while training).
    Several concepts: one target group each ('target:NAME'; the bar holds when every one is erased)."""
    concepts = params.concepts
    val = {role: sets[role].get("val") or sets[role]["train"] for role in ("target", "preserve")}

    def target_prompts(i: int) -> list[str]:
        return [r["prompt"] for r in val["target"] if len(concepts) == 1 or r.get("concept", 0) == i]

    names = ["target"] if len(concepts) == 1 else [f"target:{c.name}" for c in concepts]
    if params.uses_world:
        from trust.world.classifier import ConceptClassifier

        classifier = ConceptClassifier.load(root / params.world.classifier_dir)

        def judge(want):
            return lambda images: detected(classifier.predict(images.float()), want)

        groups = [ValGroup(n, target_prompts(i), judge(c.detect), kept=False)
                  for i, (n, c) in enumerate(zip(names, concepts))]
        from trust.concepts import shows
        from trust.stages.evaluate import keep_name

        for want in params.kept:
            showing = [r["prompt"] for r in val["preserve"] if shows(r["labels"], want)]
            if showing:
                groups.append(ValGroup(keep_name(want), showing, judge(want)))
        return groups
    from trust.detectors import build_detector

    det = build_detector(params.evaluate.detector, root, device=params.model.device, clip_dir=params.model.clip_dir)
    return [ValGroup(n, target_prompts(i), det.detect, kept=False) for i, n in enumerate(names)]


def _adversarial_summary(ft, history: list[dict]) -> dict | None:
    """What adversarial erasure cost and found: inner attacks, their seconds, objective before/after."""
    if not ft.adversarial.enabled:
        return None
    runs = [h for h in history if "adv_s" in h]
    return {"attacks": len(runs), "seconds": sum(h["adv_s"] for h in runs),
            "objective_start": [h["adv_obj_start"] for h in runs], "objective_end": [h["adv_obj_end"] for h in runs],
            "prompts": [h["adv_prompt"] for h in runs if "adv_prompt" in h][-8:]}


@dataclass
class Trained:
    """One training to the bar: the method (its weights in parts.unet), the loop's result, the bar check."""

    method: object
    result: object
    bar: BarCheck | None
    history: list[dict]
    seconds: float
    start: int


def training_resources(params: Params, parts, sets: dict):
    """What the method needs beyond its prompt data: the scorer's resources (localize.scorer_resources)
    and, with finetune.prior, concept-free replay's images and captions (trust/methods/prior.py) from the
    preservation training rows."""
    res = localize.scorer_resources(params)
    prior = params.finetune.prior
    if not prior.enabled:
        return res
    from trust.methods.prior import PriorData

    data = PriorData.build(parts, sets["preserve"]["train"], params.concept.detect, prior.empty_share,
                           params.finetune.seed, params.finetune.preserve_references)
    console.print(f"finetune.prior: {len(data)} replay images, {len(data.captions)} captions "
                  f"(e.g. {', '.join(repr(c) for c in data.captions[:3])})", soft_wrap=True)
    return dataclasses.replace(res, prior=data)


def _train(params: Params, root: Path, parts, rows: list[dict], sets: dict, mask: dict, groups, ckpt_dir: Path,
           digest: str, progress: bool, concepts: int = 1) -> Trained:
    """Train the configured method on the forget `rows` (of `concepts` concepts) to the bar of the val
    `groups` (None: no bar), resuming from `ckpt_dir` when its digest matches. The time budget is
    finetune.max_seconds per concept (a joint step trains every concept: trust/methods/data.py)."""
    ft = params.finetune
    data = ForgetData.build(parts, rows, ft.references, ft.seed)
    method = build_method(parts, data, ft, params.localize, keep=lambda: preserve_data(parts, keep_rows(params, sets), ft),
                          initial_mask=mask or None, resources=training_resources(params, parts, sets))
    start, history, spent, meta = 0, [], 0.0, {}
    meta_path = ckpt_dir / "state.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("digest") != digest:
            meta = {}
    bar = None
    if groups is not None:  # built before a checkpoint loads: its base rates are the starting model's
        gates = params.registry.gates
        bar = BarCheck(method, groups, ft.to_bar, gates.max_target_rate,
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

    budget = None if ft.max_seconds is None else max(ft.max_seconds * concepts - spent, 1e-3)
    result = train(method, ft.steps, start=start, history=history, checkpoint=checkpoint,
                   checkpoint_every=ft.checkpoint_every, progress=progress, max_seconds=budget,
                   check=bar, check_every=ft.to_bar.check_every)
    history = result.history
    if bar is not None:
        for c in bar.state.checks:  # the check's numbers on the step they were taken at
            h = history[c["step"] - 1]
            h.update({k: c[k] for k in ("val_target", "val_worst_drop", "keep_weight", "lr", "val_target_clean",
                                        "val_target_attacked") if k in c})
    return Trained(method, result, bar, history, time.perf_counter() - t0 + spent, start)


def _not_reached(ft, tr: Trained, what: str = "") -> BarNotReached:
    bar, result = tr.bar, tr.result
    if tr.method.finished:  # a training-free method (conceptprune, uce, rece): more steps change nothing
        return BarNotReached(
            f"finetune: {what}{ft.method.name}'s one edit did not reach the bar on the validation prompts: "
            f"{bar.report()}. Nothing was written or registered; change finetune.method's knobs (a training-"
            "free method gains nothing from more steps), or see the check in the MLflow run")
    why = "the time budget (finetune.max_seconds) ran out" if result.out_of_time else \
          "the step budget (finetune.steps) ran out"
    return BarNotReached(
        f"finetune: {what}{why} before the bar was reached on the validation prompts: {bar.report()}. Nothing "
        "was written or registered; raise finetune.steps / finetune.max_seconds, or see the checks in "
        "the MLflow run (val_target, val_worst_drop)")


class _Measured:
    """What BarCheck reads of a method, for a check of weights no method trains (the fused ones)."""

    finished = False

    def __init__(self, parts, lr: float, trainable: int = 0):
        self.parts, self._lr, self._n = parts, lr, trainable

    def keep_weight(self) -> float:
        return 0.0

    def lr(self) -> float:
        return self._lr

    def trainable_parameters(self) -> int:
        return self._n


def _fused(params: Params, root: Path, parts, sets: dict, mask: dict, groups, ckpt_dir: Path, digest: str,
           progress: bool):
    """Several concepts, finetune.multi.mode `fused`: the method trained on each concept's prompts alone,
    each from the base weights and to its own bar (its target, its own kept concepts), then every
    concept's edit of the attn2 to_k/to_v weights fused in closed form (ANT's Eq. 7, one edit per
    concept, the preservation prompts held where they were: trust/methods/ant_fusion/lora.py), and the
    fused weights checked against the bar on every val group. A finished concept's edit is kept in
    the checkpoint folder, so a killed run resumes at the concept it was on.
    Returns (the last Trained with the run's whole history, the failure or None, the fusion record)."""
    from trust.methods.ant_fusion.lora import fuse_closed_form, kv_weight_names, token_embeddings, write_weights
    from trust.stages.evaluate import keep_name

    ft, mc = params.finetune, params.finetune.multi
    names = kv_weight_names(parts.unet)
    base_kv = {k: parts.unet.get_parameter(k).detach().clone() for k in names}
    final = None
    if groups is not None:  # the fused model's check: base rates of every group, measured now (base weights)
        final = BarCheck(_Measured(parts, ft.lr), groups, ft.to_bar, params.registry.gates.max_target_rate,
                         params.registry.gates.max_preservation_drop, seed=ft.seed, guidance=params.evaluate.guidance)
    deltas, history, seconds, trained, record = [], [], 0.0, None, {"concepts": []}
    for i, c in enumerate(params.concepts):
        rows = [r for r in sets["target"]["train"] if r.get("concept", 0) == i]
        done = ckpt_dir / f"concept-{i}.safetensors"
        write_weights(parts.unet, base_kv)  # every concept from the base weights
        meta_i = ckpt_dir / f"concept-{i}.json"
        if done.is_file() and meta_i.is_file() and json.loads(meta_i.read_text()).get("digest") == digest:
            deltas.append(load_tensors(done))
            record["concepts"].append({**json.loads(meta_i.read_text()), "read_back": True})
            console.print(f"[cyan]fused: concept {c.name!r} was finished; its edit is read back")
            continue
        mine = None
        if groups is not None:
            kept = {keep_name(w) for w in c.keep if w in params.kept}
            mine = [g for g in groups if g.name == f"target:{c.name}" or (g.kept and g.name in kept)]
        console.print(f"[cyan]fused: concept {i + 1}/{len(params.concepts)} {c.name!r} ({len(rows)} prompts)")
        trained = _train(params, root, parts, rows, sets, mask, mine, ckpt_dir / f"concept-{i}", digest, progress)
        offset = history[-1]["step"] if history else 0
        history += [{**h, "step": h["step"] + offset, "concept": i} for h in trained.history]
        seconds += trained.seconds
        mine_rec = {"name": c.name, "steps": len(trained.history), "seconds": trained.seconds,
                    "trainable_parameters": trained.method.trainable_parameters()}
        record["concepts"].append(mine_rec)
        if trained.bar is not None and not trained.bar.state.reached:
            return dataclasses.replace(trained, history=history, seconds=seconds), \
                _not_reached(ft, trained, f"concept {c.name!r} (fused): "), None
        delta = {k: (parts.unet.get_parameter(k).detach() - base_kv[k]).contiguous() for k in names}
        save_tensors(delta, done)
        write_json({**mine_rec, "digest": digest}, meta_i)
        deltas.append(delta)
    pos = mc.fusion_positions
    concept_embs = [token_embeddings(parts, list(dict.fromkeys(r["prompt"] for r in sets["target"]["train"]
                                                             if r.get("concept", 0) == i)), pos)
                    for i in range(len(params.concepts))]
    preserve = token_embeddings(parts, list(dict.fromkeys(r["prompt"] for r in sets["preserve"]["train"])), pos)
    t0 = time.perf_counter()
    write_weights(parts.unet, fuse_closed_form(base_kv, deltas, concept_embs, preserve, mc.fusion_beta,
                                               mc.fusion_ridge))
    record["fusion_s"] = time.perf_counter() - t0
    seconds += record["fusion_s"]
    if trained is None:  # every concept was read back (a run killed after its last one): their numbers
        n = max(r["trainable_parameters"] for r in record["concepts"])
        trained = Trained(_Measured(parts, ft.lr, n), None, None, [], 0.0, 0)
    failure = None
    if final is not None:
        steps = ft.to_bar.confirm_steps or ft.to_bar.sample_steps
        base = final.base_confirm or final.base
        rates = final.rates(steps)
        targets = {g.name: rates[g.name] for g in groups if not g.kept}
        drops = {g.name: base[g.name] - rates[g.name] for g in groups if g.kept}
        record["check"] = {"steps": steps, "val_targets": targets, "val_keep_drop": drops}
        bad = [f"{n} {v:.2f}" for n, v in targets.items() if v > final.max_target + 1e-9] + \
              [f"kept {n} {d:+.2f}" for n, d in drops.items() if d > final.max_drop + 1e-9]
        if bad:
            fix = ("lower finetune.multi.fusion_beta (targets came back: the preservation prompts outweigh the edits)"
                   if any(v > final.max_target + 1e-9 for v in targets.values()) else
                   "raise finetune.multi.fusion_beta (kept concepts dropped)")
            failure = BarNotReached(
                f"finetune: every concept reached its bar alone, but the fused weights miss it on the validation "
                f"prompts ({', '.join(bad)}; bar: target <= {final.max_target:.2f}, kept drop <= "
                f"{final.max_drop:.2f}). Nothing was written or registered; {fix}, or use finetune.multi.mode: "
                "joint. The concepts' edits stay in the checkpoint folder: a rerun with other fusion knobs only "
                "fuses and checks again")
    last = dataclasses.replace(trained, history=history, seconds=seconds, start=0)
    return last, failure, record


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
    ckpt_dir = root / paths.FINETUNE_CHECKPOINTS
    digest = _digest(params, fingerprint, sets, mask)
    groups = val_groups(params, root, sets) if ft.to_bar.enabled else None
    failure, fused_record = None, None
    if len(params.concepts) > 1 and ft.multi.mode == "fused":
        # the concepts' edits do not depend on how they are fused: a fusion knob changed reuses them
        same_edits = params.model_copy(update={"finetune": ft.model_copy(update={"multi": type(ft.multi)(mode="fused")})})
        tr, failure, fused_record = _fused(params, root, parts, sets, mask, groups, ckpt_dir,
                                           _digest(same_edits, fingerprint, sets, mask), progress)
    else:
        tr = _train(params, root, parts, sets["target"]["train"], sets, mask, groups, ckpt_dir, digest, progress,
                    concepts=len(params.concepts))
        if tr.bar is not None and not tr.bar.state.reached:
            failure = _not_reached(ft, tr)
    method, bar, history, seconds, start = tr.method, tr.bar, tr.history, tr.seconds, tr.start

    section = {"finetune": ft.model_dump(mode="json"), "localize": params.localize.model_dump(mode="json")}
    with stage_run("finetune", section, root, base_fingerprint=fingerprint, started=started) as run_:
        if failure is not None:
            # a failed run, logged as one: its curves and checks are in MLflow; no delta is written
            for h in history:
                run_.log_metrics({k: h[k] for k in CURVE_KEYS if k in h}, step=h["step"])
            raise failure
        with staged_dir(root / paths.FINETUNE_DIR) as out:
            name = ft.method.name
            summary = save_delta(base_state, parts.unet.state_dict(), out / "delta.safetensors",
                                 {"base_fingerprint": fingerprint, "method": name, "concept": params.concept_name})
            knobs = ", ".join(f"{k}={v}" for k, v in ft.method.model_dump().items() if k != "name")[:90]
            curves_plot(history, out / "curves.png", f"{name} on '{params.concept_name}' ({knobs})")
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
            **({"fused": fused_record} if fused_record else {}),
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
