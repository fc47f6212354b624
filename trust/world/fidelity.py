"""`trust world eval`: does the world model draw what it is asked to?

Fidelity = share of images generated for a prompt that the world's classifier labels as
the prompted concept(s). Canonical prompts "a <colour> <shape> on a <background>
background" give per-shape and per-colour numbers; synonym paraphrases ("a crimson disk")
and shape-only / colour-only prompts are reported beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trust.models.parts import DiffusionParts
from trust.sampling import generate
from trust.utils.images import labelled_grid
from trust.world.captions import canonical_prompt, fill
from trust.world.classifier import ConceptClassifier
from trust.world.vocabulary import BACKGROUND_WORDS, BACKGROUNDS, COLOUR_WORDS, COLOURS, SHAPE_WORDS, SHAPES
from trust.world.config import FidelityConfig  # noqa: F401 (its home; re-exported)


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    group: str  # canonical | synonym | shape_only | colour_only
    shape: str | None = None
    colour: str | None = None
    background: str | None = None

    @property
    def expected(self) -> dict[str, str]:
        return {k: v for k, v in (("shape", self.shape), ("colour", self.colour), ("background", self.background)) if v}


def fidelity_prompts() -> list[PromptSpec]:
    specs = [
        PromptSpec(canonical_prompt(c, s, b), "canonical", s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS
    ]
    # Paraphrases: every shape x colour pair, named by non-canonical synonyms, with and without
    # a (synonym) background phrase.
    for si, s in enumerate(SHAPES):
        for ci, c in enumerate(COLOURS):
            sw = SHAPE_WORDS[s][1 + (ci + si) % (len(SHAPE_WORDS[s]) - 1)]
            cw = COLOUR_WORDS[c][1 + (si + ci) % (len(COLOUR_WORDS[c]) - 1)]
            if (si + ci) % 2:
                b = BACKGROUNDS[si % 2]
                bw = BACKGROUND_WORDS[b][1 + ci % (len(BACKGROUND_WORDS[b]) - 1)]
                specs.append(PromptSpec(fill("a {c} {s} on a {b} background", c=cw, s=sw, b=bw), "synonym", s, c, b))
            else:
                specs.append(PromptSpec(fill("a {c} {s}", c=cw, s=sw), "synonym", s, c))
    specs += [PromptSpec(fill("a {s}", s=s), "shape_only", shape=s) for s in SHAPES]
    specs += [PromptSpec(fill("a {c} shape", c=c), "colour_only", colour=c) for c in COLOURS]
    return specs


def sample_seeds(base: int, prompt_index: int, n: int) -> list[int]:
    """Per-image seeds that depend only on (base, prompt, sample): batching never changes an image."""
    return [base * 1_000_003 + prompt_index * 1_000 + j for j in range(n)]


def _rate(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else float("nan")


def evaluate_fidelity(
    parts: DiffusionParts,
    classifier: ConceptClassifier,
    cfg: FidelityConfig,
    specs: list[PromptSpec] | None = None,
    progress: bool = False,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Returns (report, images per prompt)."""
    specs = specs if specs is not None else fidelity_prompts()
    prompts, seeds = [], []
    for i, spec in enumerate(specs):
        prompts += [spec.prompt] * cfg.samples_per_prompt
        seeds += sample_seeds(cfg.seed, i, cfg.samples_per_prompt)
    images = generate(parts, prompts, seeds, cfg.steps, cfg.guidance, cfg.batch_size, progress=progress)
    labels = classifier.predict(images)

    per_prompt, by_prompt_images = [], {}
    for i, spec in enumerate(specs):
        sl = slice(i * cfg.samples_per_prompt, (i + 1) * cfg.samples_per_prompt)
        got = {h: labels[h][sl] for h in labels}
        ok = {h: [g == want for g in got[h]] for h, want in spec.expected.items()}
        joint = [all(ok[h][j] for h in ok) for j in range(cfg.samples_per_prompt)]
        per_prompt.append({"prompt": spec.prompt, "group": spec.group, **spec.expected,
                           "rates": {h: _rate(v) for h, v in ok.items()}, "joint": _rate(joint), "_ok": ok, "_joint": joint})
        by_prompt_images[spec.prompt] = images[sl]

    def pooled(group: str, key: str, value: str) -> dict[str, float]:
        rows = [r for r in per_prompt if r["group"] == group and r.get(key) == value]
        out = {h: _rate([x for r in rows for x in r["_ok"][h]]) for h in ("shape", "colour", "background")}
        out["joint"] = _rate([x for r in rows for x in r["_joint"]])
        return out

    report: dict = {
        "settings": {
            "sampler": "DDIM", "steps": cfg.steps, "guidance": cfg.guidance, "samples_per_prompt": cfg.samples_per_prompt,
            "seed": cfg.seed, "detector": "world concept classifier (argmax per head)",
            "model_fingerprint": parts.fingerprint(),
            "definition": "per shape / colour: share of images from 'a <colour> <shape> on a <background> background' "
                          "labelled as the prompted shape and colour (joint); shape/colour columns score one head",
        },
        "shape": {s: pooled("canonical", "shape", s) for s in SHAPES},
        "colour": {c: pooled("canonical", "colour", c) for c in COLOURS},
        "background": {b: pooled("canonical", "background", b) for b in BACKGROUNDS},
    }
    syn = [r for r in per_prompt if r["group"] == "synonym"]
    if syn:
        report["synonym"] = {
            "pooled_joint": _rate([x for r in syn for x in r["_joint"]]),
            "min_prompt_joint": min(r["joint"] for r in syn),
            "prompts": {r["prompt"]: r["joint"] for r in syn},
        }
    report["shape_only"] = {r["prompt"]: r["rates"]["shape"] for r in per_prompt if r["group"] == "shape_only"}
    report["colour_only"] = {r["prompt"]: r["rates"]["colour"] for r in per_prompt if r["group"] == "colour_only"}

    # Concepts with no prompt in `specs` (a partial prompt set) are not judged.
    failures = [f"shape {s}: {v['joint']:.2f} < {cfg.bar_canonical}" for s, v in report["shape"].items() if v["joint"] < cfg.bar_canonical]
    failures += [f"colour {c}: {v['joint']:.2f} < {cfg.bar_canonical}" for c, v in report["colour"].items() if v["joint"] < cfg.bar_canonical]
    if syn and report["synonym"]["pooled_joint"] < cfg.bar_synonym:
        failures.append(f"synonym prompts: {report['synonym']['pooled_joint']:.2f} < {cfg.bar_synonym}")
    report["bars"] = {"canonical": cfg.bar_canonical, "synonym": cfg.bar_synonym}
    report["failures"] = failures
    report["passed"] = not failures
    return report, by_prompt_images


def write_grids(specs: list[PromptSpec], images: dict[str, torch.Tensor], report: dict, out_dir: Path) -> list[Path]:
    """One PNG per prompt group: a row of samples per prompt."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = report["settings"]
    paths = []
    for group in dict.fromkeys(spec.group for spec in specs):
        rows = [(spec.prompt, images[spec.prompt]) for spec in specs if spec.group == group]
        title = f"{group} prompts - DDIM {s['steps']} steps, guidance {s['guidance']}, seeds from {s['seed']}"
        path = out_dir / f"grid_{group}.png"
        labelled_grid(rows, title=title).save(path)
        paths.append(path)
    return paths
