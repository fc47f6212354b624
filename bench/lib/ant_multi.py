"""Erasing several world concepts at once with ANT: closed-form fusion vs sequential vs joint.

Every strategy trains LoRAs on the cross-attention to_k/to_v (trust.methods.ant_fusion.lora.ConceptLora,
the ANT loss of Eq. 3, same timestep convention and hyper-parameters); only how the concepts are
combined differs:

- `fusion` (paper Eq. 7, MACE-style): one LoRA per concept, each trained from the original
  weights, fused in closed form with the preservation prompts' embeddings (fuse_closed_form);
  `fusion:tokens` / `fusion:all` pick fusion_positions (e_j, e_k at the prompts' real tokens,
  or at every position the cross-attention reads) and reuse the same LoRAs;
- `sequential`: LoRA 1 trained against the original and merged (W + Delta W_1), LoRA 2 trained
  against that model and merged, then LoRA 3: each concept is erased from the previous result;
- `joint`: one LoRA trained on the union of the concepts' training data, for as many steps as
  the other two strategies use in total (n_concepts x steps), so all three see the same number of
  training batches.

Prompts: each concept's target templates expand (with synonym paraphrases) into train and held-out
prompts (trust.concepts.build_prompt_sets). Preservation prompts are the world's canonical prompts
"a <colour> <shape>" / "... on a <background> background" (and paraphrases) that show *none* of
the targets (by trust.concepts.labels_of; a triangle without a background is left out when a
target is "triangle on a striped background"), split train/held-out by seed. Kept concepts are
measured on the held-out preservation prompts that show them, targets on their held-out target
prompts, with the world classifier (bench.lib.methods.detection_rate), base vs each strategy
on the same seeds.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from trust.concepts import build_prompt_sets, expand, labels_of, paraphrase
from trust.config import ConceptParams, FinetuneParams, PromptsParams
from trust.methods.ant_fusion.config import AntFusionConfig
from trust.methods.data import ForgetData
from trust.methods.ant_fusion.lora import fuse_deltas, kv_weight_names, write_weights
from trust.methods.ant_fusion.method import train_concept_lora

STRATEGIES = ("fusion", "sequential", "joint")


@dataclass
class Target:
    name: str
    templates: list[str]
    detect: dict[str, str]
    # finetune fields for this concept's LoRA only (fusion, sequential), e.g. its own t' as the paper
    # picks per concept (nudity 43, celebrity 40, art style 47); joint trains one LoRA with the shared ones.
    finetune: dict = field(default_factory=dict)


@dataclass
class Kept:
    name: str
    want: dict[str, str]


# The example: a shape, a colour, and a shape only in one context.
DEFAULT_TARGETS = [
    Target("circle", ["a {colour} circle", "a {colour} circle on a {background} background", "a circle"],
           {"shape": "circle"}),
    Target("yellow", ["a yellow {shape}", "a yellow {shape} on a {background} background", "a yellow shape"],
           {"colour": "yellow"}),
    Target("triangle on striped", ["a {colour} triangle on a striped background"],
           {"shape": "triangle", "background": "striped"}),
]
DEFAULT_KEPT = [
    Kept("square", {"shape": "square"}), Kept("cross", {"shape": "cross"}),
    Kept("red", {"colour": "red"}), Kept("green", {"colour": "green"}), Kept("blue", {"colour": "blue"}),
    Kept("triangle on plain", {"shape": "triangle", "background": "plain"}),
]
PRESERVE_TEMPLATES = ["a {colour} {shape}", "a {colour} {shape} on a {background} background"]


def _shows(labels: dict[str, str], want: dict[str, str]) -> bool:
    return all(labels.get(h) == v for h, v in want.items())


def _may_show(labels: dict[str, str], want: dict[str, str]) -> bool:
    """The prompt can show `want`: no head it names contradicts it (an unnamed head may match)."""
    return all(labels.get(h, v) == v for h, v in want.items())


@dataclass
class MultiPrompts:
    targets: dict[str, dict]  # name -> {"train": [rows], "eval": [prompts], "detect": {...}}
    preserve_train: list[str]
    preserve_eval: list[str]
    kept: dict[str, dict]  # name -> {"want": {...}, "eval": [prompts]}
    excluded: list[str] = field(default_factory=list)  # preservation candidates that may show a target


def build_multi_prompts(targets: list[Target], kept: list[Kept], cfg: PromptsParams) -> MultiPrompts:
    out = {}
    for t in targets:
        c = ConceptParams(name=t.name, target=t.templates, anchor="a {background} background", preserve=[],
                          detect=t.detect, keep=[])
        sets = build_prompt_sets(c, cfg)["target"]
        out[t.name] = {"train": sets["train"], "eval": [r["prompt"] for r in sets["eval"]], "detect": t.detect}
    rng = np.random.default_rng(cfg.seed + 17)
    cands = []
    for tpl in PRESERVE_TEMPLATES:
        for p, _ in expand(tpl):
            cands += [p] + ([paraphrase(p, rng)] if cfg.paraphrases else [])
    cands = list(dict.fromkeys(cands))
    keep_ok, excluded = [], []
    for p in cands:
        lab = labels_of(p)
        (excluded if any(_may_show(lab, t.detect) for t in targets) else keep_ok).append(p)
    # held-out split per kept concept (each prompt in the group of the first kept concept it shows), so
    # every kept concept has held-out prompts
    groups: dict[int, list[str]] = {}
    for p in keep_ok:
        lab = labels_of(p)
        groups.setdefault(next((i for i, k in enumerate(kept) if _shows(lab, k.want)), len(kept)), []).append(p)
    p_train, p_eval = [], []
    for i in sorted(groups):
        g = groups[i]
        order = rng.permutation(len(g))
        n_eval = max(1, round(len(g) * cfg.eval_fraction)) if len(g) > 1 else 0
        p_eval += [g[j] for j in sorted(order[:n_eval])]
        p_train += [g[j] for j in sorted(order[n_eval:])]
    kept_sets = {k.name: {"want": k.want, "eval": [p for p in p_eval if _shows(labels_of(p), k.want)]} for k in kept}
    return MultiPrompts(out, p_train, p_eval, kept_sets, excluded)


def concat_data(datas: list[ForgetData]) -> ForgetData:
    return ForgetData(latents=torch.cat([d.latents for d in datas]), target_emb=torch.cat([d.target_emb for d in datas]),
                      anchor_emb=torch.cat([d.anchor_emb for d in datas]), prompts=[p for d in datas for p in d.prompts])


def _cycle(items: list[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)] if items else []


@dataclass
class MultiSettings:
    images: int = 32  # held-out images per target and per kept concept
    sample_steps: int = 20  # the world eval's DDIM steps
    guidance: float = 4.0
    references: int = 16  # reference images per concept (and for the preservation data)
    seed: int = 0


def measure(parts, classifier, prompts: MultiPrompts, s: MultiSettings) -> dict:
    """Detection rates of every target and every kept concept on fixed held-out prompts and seeds."""
    from bench.lib.methods import detection_rate

    out = {"targets": {}, "kept": {}}
    for i, (name, t) in enumerate(prompts.targets.items()):
        seeds = [s.seed * 7919 + 300_000 + 1000 * i + j for j in range(s.images)]
        out["targets"][name] = detection_rate(parts, classifier, _cycle(t["eval"], s.images), seeds, t["detect"],
                                              s.sample_steps, s.guidance)
    for i, (name, k) in enumerate(prompts.kept.items()):
        if not k["eval"]:
            continue
        seeds = [s.seed * 7919 + 400_000 + 1000 * i + j for j in range(s.images)]
        out["kept"][name] = detection_rate(parts, classifier, _cycle(k["eval"], s.images), seeds, k["want"],
                                           s.sample_steps, s.guidance)
    return out


def _merge(unet, delta: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, d in delta.items():
            unet.get_parameter(k).add_(d)


def _with(ft: FinetuneParams, update: dict) -> FinetuneParams:
    """`ft` with `update` (shared finetune fields, and ANT+fusion knobs with or without their old
    `ant_` prefix), validated; the method is always ant_fusion (its LoRA settings are the knobs).
    Multi-concept fusion may use fusion_overlap `sum`, which the one-concept pipeline refuses, so
    the method is validated on its own and set after the shared fields are."""
    update = {k.removeprefix("ant_"): v for k, v in update.items()}
    shared = {k: v for k, v in update.items() if k in FinetuneParams.model_fields}
    knobs = {k: v for k, v in update.items() if k not in FinetuneParams.model_fields}
    own = ft.method.model_dump() if ft.method.name == "ant_fusion" else {}
    method = AntFusionConfig.model_validate({**own, **knobs, "name": "ant_fusion"})
    checked = FinetuneParams.model_validate({**ft.model_dump(), **shared, "method": {"name": "ant_fusion"}})
    return checked.model_copy(update={"method": method})


def parse_strategy(strategy: str) -> tuple[str, dict]:
    """'fusion:all@0.3+sum' -> ('fusion', {fusion_positions: all, fusion_beta: 0.3,
    fusion_overlap: sum}); 'joint' -> ('joint', {})."""
    strategy_, _, overlap = strategy.partition("+")
    head, _, beta = strategy_.partition("@")
    kind, _, positions = head.partition(":")
    update = {}
    if positions:
        update["fusion_positions"] = positions
    if overlap:
        update["fusion_overlap"] = overlap
    if beta:
        try:
            update["fusion_beta"] = float(beta)
        except ValueError:
            raise ValueError(f"strategy {strategy!r}: the part after '@' is the fusion beta, a number") from None
    if kind not in STRATEGIES or (update and kind != "fusion"):
        raise ValueError(f"unknown strategy {strategy!r}; strategies: {', '.join(STRATEGIES)} "
                         "(fusion:tokens, fusion:all, fusion:all@BETA, fusion:all+sum)")
    return kind, update


def run_strategy(strategy: str, parts, datas: list[ForgetData], keep: ForgetData | None, preserve_prompts: list[str],
                 ft: FinetuneParams, progress: bool = False, cache: dict | None = None,
                 per_concept: list[dict] | None = None, shows=None):
    """A copy of `parts` with the concepts of `datas` erased by `strategy` (parts is left unchanged).

    `fusion:tokens` / `fusion:all` fuse with that fusion_positions (plain `fusion`: ft's), and
    `fusion[:positions]@BETA` with that fusion_beta. Pass the same `cache` dict to reuse the
    per-concept LoRAs between fusion variants. `per_concept[i]`: finetune fields for concept i's LoRA.
    `shows(prompt)`: indices of the concepts a prompt shows (fusion with `+sum`, fusion_overlap)."""
    kind, update = parse_strategy(strategy)
    per = per_concept or [{} for _ in datas]
    p = copy.copy(parts)
    p.unet = copy.deepcopy(parts.unet)
    if kind == "fusion":
        ft = _with(ft, update)
        base = {k: p.unet.get_parameter(k).detach().clone() for k in kv_weight_names(p.unet)}
        cache = {} if cache is None else cache
        if "fusion_deltas" not in cache:
            cache["fusion_deltas"] = [train_concept_lora(p, d, _with(ft, per[i]), i, keep=keep, progress=progress)
                                      for i, d in enumerate(datas)]
        write_weights(p.unet, fuse_deltas(p, base, cache["fusion_deltas"], datas, preserve_prompts, ft, shows))
    elif kind == "sequential":
        for i, d in enumerate(datas):  # frozen = the model so far: each concept erased from the previous result
            _merge(p.unet, train_concept_lora(p, d, _with(ft, per[i]), i, keep=keep, progress=progress))
    else:  # joint: one LoRA, the shared settings
        joint_ft = ft.model_copy(update={"steps": ft.steps * len(datas)})
        _merge(p.unet, train_concept_lora(p, concat_data(datas), joint_ft, 0, keep=keep, progress=progress))
    p.unet.requires_grad_(False)
    return p


def compare(parts, classifier, ft: FinetuneParams, prompts_cfg: PromptsParams, targets=None, kept=None,
            strategies=STRATEGIES, settings: MultiSettings | None = None, progress: bool = True, log=print) -> dict:
    """Base and each strategy: per-target and per-kept-concept detection rates, times."""
    targets, kept = targets or DEFAULT_TARGETS, kept or DEFAULT_KEPT
    s = settings or MultiSettings()
    for st in strategies:
        parse_strategy(st)  # refuse a bad name before any training
    for t in targets:
        _with(ft, t.finetune)
    mp = build_multi_prompts(targets, kept, prompts_cfg)
    t0 = time.perf_counter()
    datas = [ForgetData.build(parts, mp.targets[t.name]["train"], s.references, ft.seed + 10 * i)
             for i, t in enumerate(targets)]
    keep = None
    if ft.preserve_weight > 0:
        keep = ForgetData.build(parts, [{"prompt": q, "anchor": None} for q in mp.preserve_train], s.references,
                                ft.seed + 1)
    data_s = time.perf_counter() - t0
    base = measure(parts, classifier, mp, s)
    log(f"base: {base}")
    rows = {}
    cache: dict = {}
    for strategy in strategies:
        t1 = time.perf_counter()
        p = run_strategy(strategy, parts, datas, keep, mp.preserve_train, ft, progress, cache,
                         [t.finetune for t in targets],
                         shows=lambda q: {i for i, t in enumerate(targets) if _shows(labels_of(q), t.detect)})
        train_s = time.perf_counter() - t1
        r = measure(p, classifier, mp, s)
        r["train_s"] = train_s
        r["max_target"] = max(r["targets"].values())
        drops = {k: base["kept"][k] - v for k, v in r["kept"].items()}
        r["kept_drop"] = drops
        r["max_kept_drop"] = max(drops.values()) if drops else 0.0
        r["mean_kept"] = sum(r["kept"].values()) / max(1, len(r["kept"]))
        rows[strategy] = r
        log(f"{strategy}: {r}")
        del p
    return {
        "targets": {t.name: {"templates": t.templates, "detect": t.detect, "finetune": t.finetune,
                             "train_prompts": len(mp.targets[t.name]["train"]),
                             "eval_prompts": mp.targets[t.name]["eval"]} for t in targets},
        "kept": {k: {"want": v["want"], "eval_prompts": v["eval"]} for k, v in mp.kept.items()},
        "preserve_train_prompts": len(mp.preserve_train), "excluded_preserve_candidates": len(mp.excluded),
        "finetune": ft.model_dump(mode="json"), "settings": s.__dict__, "references_s": data_s,
        "torch_threads": torch.get_num_threads(), "base": base, "strategies": rows,
    }


def markdown(res: dict, bar: float = 0.10) -> str:
    ft, s = res["finetune"], res["settings"]
    m = ft["method"]
    tnames, knames = list(res["targets"]), list(res["kept"])
    lines = [
        "# ANT: three world concepts erased at once (fusion vs sequential vs joint)",
        "",
        f"Targets: {', '.join(repr(t) for t in tnames)}. LoRA rank {m['lora_rank']} on attn2 to_k/to_v, ANT loss "
        f"(t'={m['split_step']}/{m['ddim_steps']}, eta {m['eta']}, lambda=({m['l1']}, {m['l2']}, "
        f"{m['l3']})), lr {ft['lr']:g}, {ft['steps']} steps per concept (joint: {ft['steps'] * len(tnames)}), "
        f"batch {ft['batch_size']}, preserve_weight {ft['preserve_weight']:g}, fusion beta {m['fusion_beta']:g}, "
        f"fusion positions `{m.get('fusion_positions', 'tokens')}` (`fusion:all` / `fusion:tokens`: that variant, "
        f"same LoRAs; `@B`: fusion beta B; `+sum`: a target prompt showing several targets gets the sum of their "
        f"edits). "
        + "".join(f"Concept {t!r} LoRA with {v['finetune']}. " for t, v in res["targets"].items() if v.get("finetune"))
        + f"Detection: world classifier, {s['images']} held-out images per row (DDIM {s['sample_steps']} steps, guidance "
        f"{s['guidance']:g}), same seeds for every model (eval seed {s.get('seed', 0)}); "
        f"torch threads {res['torch_threads']}.",
        "",
        "| model | " + " | ".join(f"{t} (target)" for t in tnames) + " | " + " | ".join(knames)
        + " | max target | max kept drop | train (s) |",
        "|---|" + "---|" * (len(tnames) + len(knames) + 3),
    ]
    b = res["base"]
    lines.append("| base | " + " | ".join(f"{b['targets'][t]:.2f}" for t in tnames) + " | "
                 + " | ".join(f"{b['kept'][k]:.2f}" for k in knames) + f" | {max(b['targets'].values()):.2f} | - | - |")
    seen_fusion = False
    for name, r in res["strategies"].items():
        shared = name.startswith("fusion") and seen_fusion  # reused the LoRAs of the fusion row above it
        seen_fusion |= name.startswith("fusion")
        lines.append(f"| {name} | " + " | ".join(f"{r['targets'][t]:.2f}" for t in tnames) + " | "
                     + " | ".join(f"{r['kept'][k]:.2f}" for k in knames)
                     + f" | {r['max_target']:.2f} | {r['max_kept_drop']:.2f} | "
                     + (f"{r['train_s']:.0f} (fusion only; LoRAs of the row above) |" if shared else f"{r['train_s']:.0f} |"))
    lines += ["", f"Bars (issue 6): each target <= {bar:.2f}; each kept concept within {bar:.2f} of base; fusion better "
                  "on preservation than sequential.", ""]
    for name, r in res["strategies"].items():
        ok_t = r["max_target"] <= bar
        ok_k = r["max_kept_drop"] <= bar
        lines.append(f"- {name}: targets {'met' if ok_t else 'NOT met'} (max {r['max_target']:.2f}); kept "
                     f"{'met' if ok_k else 'NOT met'} (max drop {r['max_kept_drop']:.2f}, mean kept {r['mean_kept']:.2f})")
    st = res["strategies"]
    for fname in [n for n in st if n.startswith("fusion")]:
        if "sequential" not in st:
            break
        f, q = st[fname], st["sequential"]
        better = f["mean_kept"] > q["mean_kept"]
        lines.append(f"- {fname} vs sequential on preservation: mean kept {f['mean_kept']:.2f} vs "
                     f"{q['mean_kept']:.2f}, max drop {f['max_kept_drop']:.2f} vs {q['max_kept_drop']:.2f}: "
                     f"{fname} {'better' if better else 'NOT better'}")
    return "\n".join(lines) + "\n"
