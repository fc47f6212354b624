"""`trust localize`: the initial concept-neuron mask, its counts per layer and a heat map."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from trust.concepts.words import kept_words
from trust.config import Params
from trust.methods.data import ForgetData
from trust.methods.loop import Resources
from trust.methods.saliency import cross_attention_params, mask_size
from trust.methods.scorers import Scorer, build_scorer
from trust.models import load_model
from trust.stages import paths, prompts
from trust.tracking import stage_run
from trust.utils.safetensors_io import load_tensors, save_tensors, write_json


def short_name(param: str) -> str:
    """'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.weight' -> 'down1.0.to_q'."""
    p = param.split(".")
    block = p[0].replace("_blocks", "").replace("mid_block", "mid")
    idx = p[1] if p[0] != "mid_block" else ""
    att = p[p.index("attentions") + 1] if "attentions" in p else ""
    return f"{block}{idx}.{att}.{p[-2]}"


def heatmap(mask: dict[str, torch.Tensor], path: Path, title: str) -> None:
    names = list(mask)
    width = max(m.numel() if m.dim() == 1 else m.shape[0] for m in mask.values())
    grid = torch.full((len(names), width), float("nan"))
    for i, k in enumerate(names):
        m = mask[k] if mask[k].dim() == 1 else mask[k].float().mean(1)
        grid[i, : m.numel()] = m
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(names) + 1.2))
    ax.imshow(grid.numpy(), aspect="auto", cmap="magma", interpolation="nearest", vmin=0, vmax=1)
    ax.set_yticks(range(len(names)), [short_name(n) for n in names], fontsize=7)
    ax.set_xlabel("output row (neuron)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scorer_resources(params: Params) -> Resources:
    """What the configured concept scorer (localize.scorer) needs, loaded from params: the world
    classifier (`classifier`), a local CLIP (`clip`); and the kept concepts' words, which adversarial
    erasure's inner attack leaves out (world only: on SD the kept concepts are no words the project
    knows). Paths are resolved at load_params."""
    loc, classifier, clip = params.localize, None, None
    if loc.scorer == "classifier":
        from trust.world.classifier import ConceptClassifier

        classifier = ConceptClassifier.load(params.world.classifier_dir)
    if loc.scorer == "clip":
        from trust.models.clip import load_clip

        clip = load_clip(params.model.clip_dir, params.model.device)
    if len(params.concepts) > 1:  # the classifier scorer and adversarial erasure take one concept (refused in params)
        return Resources(classifier=classifier, clip=clip)
    c = params.concept
    return Resources(classifier=classifier, detect=c.detect, clip=clip,
                     kept_words=kept_words(c.detect, c.keep) if params.uses_world else ())


def make_scorer(params: Params, root: Path, parts, data: ForgetData) -> Scorer:
    """The configured concept scorer (localize.scorer), with what it needs loaded from params."""
    res = scorer_resources(params)
    return build_scorer(params.localize, parts, data, classifier=res.classifier, detect=res.detect, clip=res.clip)


def run(params: Params, root: Path) -> dict:
    started = time.time()  # the stage run's start time in MLflow: the work's, not the logging's
    loc = params.localize
    parts = load_model(params.model.base, device=params.model.device, sample_batch=params.model.sample_batch,
                       dtype=params.model.dtype)
    sets = prompts.load(root)
    # (several concepts: as many references of each, and a saliency batch of each: trust/methods/data.py)
    data = ForgetData.build(parts, sets["target"]["train"], max(loc.batch_size, 8) * len(params.concepts), loc.seed)
    pars = cross_attention_params(parts.unet, loc.modules)
    with parts.autocast():  # model.dtype: the saliency pass computes in it, as TRUST's re-estimations do
        mask = make_scorer(params, root, parts, data).mask(parts.unet, parts.unet, pars, loc.seed, 0, 0)
    per_layer = {short_name(k): int(m.sum()) for k, m in mask.items()}
    total = sum(p.numel() if loc.granularity == "element" else p.shape[0] for p in pars.values())
    metrics = {"neurons": mask_size(mask), "candidates": total, "fraction": mask_size(mask) / total, "per_layer": per_layer}
    section = {"localize": loc.model_dump(mode="json"), "model": params.model.model_dump(mode="json")}
    with stage_run("localize", section, root, base_fingerprint=parts.fingerprint(), started=started) as run_:
        save_tensors(mask, root / paths.MASK, metadata={"granularity": loc.granularity, "xi": str(loc.xi)})
        heatmap(mask, root / paths.LOCALIZE_DIR / "heatmap.png",
                f"concept neurons for '{params.concept_name}' (z > {loc.xi}, {metrics['neurons']}/{total})")
        write_json(metrics, root / paths.METRICS / "localize.json")
        run_.log_metrics({k: v for k, v in metrics.items() if k != "per_layer"})
        run_.log_metrics({f"layer.{k}": v for k, v in per_layer.items()})
        run_.log_artifact(root / paths.LOCALIZE_DIR)
    return metrics


def load_mask(root: Path) -> dict[str, torch.Tensor]:
    path = root / paths.MASK
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `trust localize` first")
    return load_tensors(path)
