"""`trust evaluate`: does the concept come back? What did it cost the kept concepts?

No-attack part: images from held-out target prompts and from the preservation prompts,
base and tuned model on the same seeds, scored by the world's classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trust.config import Params
from trust.delta import apply_delta
from trust.models import KIND_WORLD, load_model
from trust.sampling import generate
from trust.stages import paths, prompts
from trust.tracking import stage_run
from trust.utils.fs import staged_dir
from trust.utils.images import labelled_grid
from trust.utils.safetensors_io import write_json
from trust.world.classifier import ConceptClassifier


def detected(labels: dict[str, list[str]], want: dict[str, str]) -> list[bool]:
    n = len(next(iter(labels.values())))
    return [all(labels[h][i] == v for h, v in want.items()) for i in range(n)]


def keep_name(want: dict[str, str]) -> str:
    # MLflow metric names allow ':' and '/', not '='.
    return "/".join(f"{h}:{v}" for h, v in sorted(want.items()))


def _rate(x: list[bool]) -> float:
    return sum(x) / len(x) if x else float("nan")


def run(params: Params, root: Path) -> dict:
    ev, concept = params.evaluate, params.concept
    parts = load_model(paths.base_model(params.model.base, root), device=params.model.device)
    if parts.kind != KIND_WORLD:
        raise ValueError(
            "evaluate: only the built-in world's classifier is available as a detector so far; "
            "an SD model needs NudeNet/CLIP detectors (adversarial-evaluation work)")
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

    base_imgs = generate(parts, prompts_rep, seeds, ev.steps, ev.guidance)
    fingerprint = parts.fingerprint()
    apply_delta(parts, root / paths.DELTA)
    tuned_imgs = generate(parts, prompts_rep, seeds, ev.steps, ev.guidance)
    base_lab, tuned_lab = classifier.predict(base_imgs), classifier.predict(tuned_imgs)

    n_t = len(target) * ev.samples_per_prompt
    t_base, t_tuned = detected(base_lab, concept.detect)[:n_t], detected(tuned_lab, concept.detect)[:n_t]
    keep = {}
    for want in concept.keep:
        idx = [i for i, p in enumerate(prompts_rep) if i >= n_t
               and all(next(r for r in preserve if r["prompt"] == p)["labels"].get(h) == v for h, v in want.items())]
        b = _rate([detected(base_lab, want)[i] for i in idx])
        t = _rate([detected(tuned_lab, want)[i] for i in idx])
        keep[keep_name(want)] = {"base": b, "tuned": t, "drop": b - t, "images": len(idx)}
    metrics = {
        "target_rate_base": _rate(t_base), "target_rate": _rate(t_tuned), "keep": keep,
        "settings": {"detector": "world classifier", "detect": concept.detect, "samples_per_prompt": ev.samples_per_prompt,
                     "steps": ev.steps, "guidance": ev.guidance, "seed": ev.seed,
                     "target_prompts": target, "preserve_prompts": preserve_prompts},
    }

    rows = []
    for j, p in enumerate(all_prompts[:12]):
        sl = slice(j * ev.samples_per_prompt, (j + 1) * ev.samples_per_prompt)
        rows += [(f"base: {p}", base_imgs[sl]), (f"erased: {p}", tuned_imgs[sl])]
    section = {"evaluate": ev.model_dump(mode="json"), "concept": concept.model_dump(mode="json")}
    with stage_run("evaluate", section, root, base_fingerprint=fingerprint) as run_:
        run_.log_metrics({"target_rate_base": metrics["target_rate_base"], "target_rate": metrics["target_rate"]})
        run_.log_metrics({f"keep.{k}.{m}": v[m] for k, v in keep.items() for m in ("base", "tuned", "drop")})
        with staged_dir(root / paths.EVALUATE_DIR) as out:
            labelled_grid(rows, title=f"'{concept.name}': base vs erased, same seeds").save(out / "before_after.png")
        write_json(metrics, root / paths.METRICS / "evaluate.json")
        run_.log_artifact(root / paths.EVALUATE_DIR)
    return metrics
