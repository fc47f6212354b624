"""`trust evaluate`: does the concept come back? What did it cost the kept concepts?

No-attack part: images from held-out target prompts and from the preservation prompts,
base and tuned model on the same seeds, scored by the world's classifier.

Adversarial part (METHODS.md, Attacks): the prompt set `evaluate.attacks.prompt_set` (I2P
CSV layout) on the erased model gives pre-ASR; each optimisation attack in
`evaluate.attacks.run` attacks its first `max_prompts` prompts and gives ASR. Fidelity:
the world classifier's Fréchet distance (named as such) of base and erased images of the
preservation prompts to rendered scenes of the same prompts, and its Δ; standard FID only
with local Inception weights. Everything lands in metrics/evaluate.json and a
self-contained outputs/evaluate/report.html.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch

from trust.attacks import AttackTarget, build_attack, load_prompt_set
from trust.concepts import labels_of
from trust.config import Params
from trust.delta import apply_delta
from trust.detectors import build_detector
from trust.generation import GenerationSettings, ModelSource, generate_images
from trust.metrics import InceptionFeatures, fid, mean_drop, preservation, world_frechet
from trust.models import KIND_WORLD, load_model
from trust.report import Example, write_report
from trust.stages import paths, prompts
from trust.tracking import stage_run
from trust.utils.fs import staged_dir
from trust.utils.images import labelled_grid
from trust.utils.safetensors_io import write_json
from trust.utils.seeding import numpy_rng
from trust.world.classifier import ConceptClassifier
from trust.world.scenes import random_scene, render, to_model_range


def detected(labels: dict[str, list[str]], want: dict[str, str]) -> list[bool]:
    n = len(next(iter(labels.values())))
    return [all(labels[h][i] == v for h, v in want.items()) for i in range(n)]


def keep_name(want: dict[str, str]) -> str:
    # MLflow metric names allow ':' and '/', not '='.
    return "/".join(f"{h}:{v}" for h, v in sorted(want.items()))


def _rate(x: list[bool]) -> float:
    return sum(x) / len(x) if x else float("nan")


def rendered_reference(prompts_rep: list[str], seed: int, size: int) -> torch.Tensor:
    """Ground-truth scenes of world prompts: the labels a prompt names, the rest drawn by seed."""
    images = []
    for i, p in enumerate(prompts_rep):
        scene = random_scene(numpy_rng(seed, 7919, i))
        scene = dataclasses.replace(scene, **{k: v for k, v in labels_of(p).items() if k in ("shape", "colour", "background")})
        images.append(render(scene, size))
    return torch.from_numpy(to_model_range(np.stack(images)))


def run_attacks(params: Params, root: Path, erased, original, detector, sets: dict) -> dict:
    """Prompt set + optimisation attacks. Returns {"results": {name: AttackResult}, "base_rate": float}."""
    ev, at = params.evaluate, params.evaluate.attacks
    rows = load_prompt_set(at.prompt_set if at.prompt_set.is_absolute() else root / at.prompt_set)
    target = AttackTarget(erased, detector, original, steps=ev.steps)
    results = {"prompt_set": build_attack("prompt_set", at).run(target, rows)}
    # How often the ORIGINAL model shows the concept on the same prompts and seeds (context for pre-ASR).
    base_hits = [any(detector.detect(target.generate(r.prompt, r, original))) for r in rows]
    for name in at.run:
        kwargs = {}
        if name == "ringabell":
            pairs = [tuple(p) for p in at.ringabell.pairs] or list(dict.fromkeys(
                (r["prompt"], r["anchor"]) for r in sets["target"]["train"] if r.get("anchor")))
            kwargs["pairs"] = pairs
        results[name] = build_attack(name, at, **kwargs).run(target, rows[: at.max_prompts])
    return {"results": results, "base_rate": _rate(base_hits)}


def _examples(results: dict, n: int = 3) -> dict[str, list[Example]]:
    before = {o.prompt: o.images for o in results["prompt_set"].outcomes}
    out = {}
    for name, res in results.items():
        ranked = sorted(res.outcomes, key=lambda o: (o.success, o.score), reverse=True)[:n]
        if name == "prompt_set":
            out[name] = [Example(o.prompt, None, False, o.score, o.images, None, o.detected_no_attack) for o in ranked]
        else:
            out[name] = [Example(o.prompt, o.adversarial, o.broken, o.score, before.get(o.prompt),
                                 None if o.detected_no_attack else o.images, o.detected_no_attack) for o in ranked]
    return out


def run(params: Params, root: Path) -> dict:
    ev, concept = params.evaluate, params.concept
    parts = load_model(paths.base_model(params.model.base, root), device=params.model.device)
    if parts.kind != KIND_WORLD:
        raise ValueError(
            "evaluate: the stage measures target/keep rates with the built-in world's classifier; on an SD model "
            "use the library (trust.attacks, trust.detectors: NudeNet, CLIP) directly — the stage is not wired for SD yet")
    classifier = ConceptClassifier.load(root / params.world.classifier_dir)
    sets = prompts.load(root)
    target = [r["prompt"] for r in sets["target"]["eval"]][: ev.max_prompts]
    # Held-out prompts only: the preservation term (if on) trains on the others.
    preserve = sets["preserve"]["eval"]
    # Up to max_prompts prompts for every kept concept, so each one is measured.
    preserve_prompts = []
    for want in concept.keep:
        shows = [r["prompt"] for r in preserve if all(r["labels"].get(h) == v for h, v in want.items())]
        if not shows:
            raise ValueError(f"concept.keep {want}: no preservation prompt shows it; add one to concept.preserve")
        preserve_prompts += [p for p in shows if p not in preserve_prompts][: ev.max_prompts]
    all_prompts = target + preserve_prompts
    prompts_rep = [p for p in all_prompts for _ in range(ev.samples_per_prompt)]
    seeds = [ev.seed * 1_000_003 + i for i in range(len(prompts_rep))]

    # Serial by default; with evaluate.distributed, Dask workers load the base folder (+ the delta)
    # themselves and check its fingerprint against the model loaded here (trust/generation).
    gen = GenerationSettings.from_params(ev)
    base_dir, delta = paths.base_model(params.model.base, root), root / paths.DELTA
    fingerprint = parts.fingerprint()
    base_imgs = generate_images(prompts_rep, seeds, ev.steps, ev.guidance, gen, parts=parts,
                                source=ModelSource.of(base_dir, fingerprint, device=params.model.device))
    original = copy.deepcopy(parts)  # the pre-erasure model: attacks need it (reference images, P4D)
    apply_delta(parts, delta)
    tuned_src = ModelSource.of(base_dir, parts.fingerprint(), delta, params.model.device) if gen.distributed else None
    tuned_imgs = generate_images(prompts_rep, seeds, ev.steps, ev.guidance, gen, parts=parts, source=tuned_src)
    base_lab, tuned_lab = classifier.predict(base_imgs), classifier.predict(tuned_imgs)

    n_t = len(target) * ev.samples_per_prompt
    t_base, t_tuned = detected(base_lab, concept.detect)[:n_t], detected(tuned_lab, concept.detect)[:n_t]
    base_hits, tuned_hits = {}, {}
    for want in concept.keep:
        idx = [i for i, p in enumerate(prompts_rep) if i >= n_t
               and all(next(r for r in preserve if r["prompt"] == p)["labels"].get(h) == v for h, v in want.items())]
        base_hits[keep_name(want)] = [detected(base_lab, want)[i] for i in idx]
        tuned_hits[keep_name(want)] = [detected(tuned_lab, want)[i] for i in idx]
    keep = preservation(base_hits, tuned_hits)
    # Prompts whose erased-model images still show the concept: re-erasure adds them to the
    # forget prompts (reerase flow). Attacks add their adversarial prompts here too.
    successful = []
    for j, p in enumerate(target):
        hits = [seeds[i] for i in range(j * ev.samples_per_prompt, (j + 1) * ev.samples_per_prompt) if t_tuned[i]]
        if hits:
            successful.append({"prompt": p, "attack": "none", "seeds": hits})

    # -- adversarial part -------------------------------------------------------------
    detector = build_detector(ev.detector, root, params.world.classifier_dir, concept.detect, params.model.device)
    attacks = run_attacks(params, root, parts, original, detector, sets)
    results = attacks["results"]
    summaries = {name: res.summary() for name, res in results.items()}
    summaries["prompt_set"]["base_rate"] = attacks["base_rate"]
    successful += results["prompt_set"].successful_prompts()
    for name, res in results.items():
        if name != "prompt_set":
            successful += res.successful_prompts(include_no_attack=False)
    pre_asr = summaries["prompt_set"]["pre_asr"]
    asr = {name: s["asr"] for name, s in summaries.items()}

    # -- fidelity on the preservation prompts -------------------------------------------
    reference = rendered_reference(prompts_rep[n_t:], ev.seed, parts.image_size)
    fidelity = {"world_fd": world_frechet(classifier, reference, base_imgs[n_t:], tuned_imgs[n_t:]),
                "preservation_drop_mean": mean_drop(keep)}
    fidelity["world_fd"]["reference"] = "rendered ground-truth scenes of the preservation prompts"
    if ev.inception_weights is not None:
        w = ev.inception_weights if ev.inception_weights.is_absolute() else root / ev.inception_weights
        fidelity["fid"] = fid(InceptionFeatures(w), reference, base_imgs[n_t:], tuned_imgs[n_t:])

    metrics = {
        "target_rate_base": _rate(t_base), "target_rate": _rate(t_tuned), "keep": keep,
        "pre_asr": pre_asr, "asr": asr, "fidelity": fidelity,
        "asr_details": {name: {k: v for k, v in s.items() if k != "detector"} for name, s in summaries.items()},
        "attacks": {name: [o.record() for o in res.outcomes] for name, res in results.items()},
        "settings": {"detector": "world classifier", "detect": concept.detect, "samples_per_prompt": ev.samples_per_prompt,
                     "steps": ev.steps, "guidance": ev.guidance, "seed": ev.seed,
                     "target_prompts": target, "preserve_prompts": preserve_prompts,
                     "attack_detector": detector.settings(), "prompt_set": str(ev.attacks.prompt_set),
                     "asr_definition": "pre-ASR = share of prompts detected with no attack; ASR = (detected with no "
                                       "attack + broken by the attack) / N (UnlearnDiffAtk)"},
    }

    def grid_rows(chosen: list[str]) -> list:
        rows = []
        for p in chosen:
            j = all_prompts.index(p)
            sl = slice(j * ev.samples_per_prompt, (j + 1) * ev.samples_per_prompt)
            rows += [(f"base: {p}", base_imgs[sl]), (f"erased: {p}", tuned_imgs[sl])]
        return rows
    section = {"evaluate": ev.model_dump(mode="json"), "concept": concept.model_dump(mode="json")}
    with stage_run("evaluate", section, root, base_fingerprint=fingerprint) as run_:
        run_.log_metrics({"target_rate_base": metrics["target_rate_base"], "target_rate": metrics["target_rate"]})
        run_.log_metrics({f"keep.{k}.{m}": v[m] for k, v in keep.items() for m in ("base", "tuned", "drop")})
        run_.log_metrics({"pre_asr": pre_asr, **{f"asr.{k}": v for k, v in asr.items()},
                          "world_fd.base": fidelity["world_fd"]["base"], "world_fd.erased": fidelity["world_fd"]["erased"],
                          "world_fd.delta": fidelity["world_fd"]["delta"]})
        with staged_dir(root / paths.EVALUATE_DIR) as out:
            write_json(successful, out / "successful_prompts.json")
            before_after = labelled_grid(grid_rows(target[:8]), title=f"'{concept.name}': base vs erased, same seeds")
            before_after.save(out / "before_after.png")
            kept = labelled_grid(grid_rows(preserve_prompts[:12]), title="kept concepts: base vs erased, same seeds")
            kept.save(out / "preservation.png")
            if ev.report:
                write_report(out / "report.html", f"Erasure of '{concept.name}': evaluation", metrics,
                             before_after, kept, _examples(results), settings=metrics["settings"])
        write_json(metrics, root / paths.METRICS / "evaluate.json")
        run_.log_artifact(root / paths.EVALUATE_DIR)
    return metrics
