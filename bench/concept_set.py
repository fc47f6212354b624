"""The development set of world concepts, erased by one default configuration:
`python bench/concept_set.py [--subset tune|report|all] [--methods TRUST,ESD-x,...] [--concepts a,b] [--force]`.

Every concept is written as a new user would: a name, a kind and the detector labels, nothing
else; what the spec leaves out (kept concepts, preservation prompts, target wordings, anchor) is
derived (trust/concepts/neighbours.py). Each (concept, method) runs the real stages - prompts ->
localize -> finetune (erase to a bar, trust/methods/stopping.py) -> evaluate - in its own workspace
`runs/concept_set/<concept>/<method>/` with params.yaml's settings (only `concept`, the method
row's finetune settings and a small per-concept attack prompt set differ; no optimisation attacks).
Pass = the registration gates on the held-out prompts: target <= max_target_rate and every kept
concept at most max_preservation_drop below base. Margin = how many held-out images separate the
result from failing: min over the target and each kept concept of (bar - measured) x images. A
budget failure (the bar not reached on the validation prompts in finetune.steps / max_seconds)
is a fail with no held-out numbers (the stage writes nothing).

Settings were chosen on the `tune` subset and are reported on the `report` subset. Results merge
into bench/results/concept_set.json (a finished (concept, method) is skipped unless --force) and
concept_set.md / concept_set.png are rewritten from it. TRUST_NUM_THREADS (default 1) threads.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.concepts import prepare_workspace  # noqa: E402

# (name, kind, detect, subset). None of these is a shipped example (circle, red circle, striped cross).
DEV_SET = [
    ("triangle", "single", {"shape": "triangle"}, "tune"),
    ("blue", "single", {"colour": "blue"}, "tune"),
    ("green-square", "combination", {"shape": "square", "colour": "green"}, "tune"),
    ("square-on-striped", "conditional", {"shape": "square", "background": "striped"}, "tune"),
    ("square", "single", {"shape": "square"}, "report"),
    ("cross", "single", {"shape": "cross"}, "report"),
    ("green", "single", {"colour": "green"}, "report"),
    ("striped", "single", {"background": "striped"}, "report"),
    ("yellow-triangle", "combination", {"shape": "triangle", "colour": "yellow"}, "report"),
    ("blue-cross", "combination", {"shape": "cross", "colour": "blue"}, "report"),
    ("green-circle", "combination", {"shape": "circle", "colour": "green"}, "report"),
    ("triangle-on-plain", "conditional", {"shape": "triangle", "background": "plain"}, "report"),
    ("circle-on-plain", "conditional", {"shape": "circle", "background": "plain"}, "report"),
    ("red-on-striped", "conditional", {"colour": "red", "background": "striped"}, "report"),
    ("yellow-on-plain", "conditional", {"colour": "yellow", "background": "plain"}, "report"),
]

# finetune overrides per method row; TRUST is params.yaml's own section. ESD-x as published (no
# preservation term; its lr for the 16px world from bench/lib/methods.py); ANT+fusion with the
# knobs of the conditional example that first passed (examples/ history, bench/results/concepts.md).
METHODS = {
    "TRUST": {},
    # TRUST with the target pool (trust/methods/target_pool.py): params.yaml's TRUST knobs plus these
    "TRUST-pool": {"method_knobs": {"target_pool": 320, "target_fresh": 0.25}},
    "ANT+fusion": {"method": {"name": "ant_fusion", "split_step": 43, "fusion_positions": "all", "fusion_beta": 0.5}},
    "ESD-x": {"method": {"name": "esd", "variant": "x"}, "lr": 1e-3, "preserve_weight": 0.0},
    # the closed-form edits (issue 15) with their own defaults; one edit, nothing to iterate: no
    # erase-to-a-bar (it would only turn a miss into "bar not reached"), the held-out gates judge the edit
    "UCE": {"method": {"name": "uce"}, "to_bar": {"enabled": False}},
    "RECE": {"method": {"name": "rece"}, "to_bar": {"enabled": False}},
}


OPTION_ROWS = ("TRUST-pool",)  # a TRUST option measured on request, not a method of the default table


def concept_raw(name: str, kind: str, detect: dict, method: str) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["concept"] = {"name": name, "kind": kind, "detect": dict(detect)}
    over = METHODS[method]
    if "method" in over:
        raw["finetune"]["method"] = dict(over["method"])
    raw["finetune"]["method"].update(over.get("method_knobs", {}))
    raw["finetune"].update({k: v for k, v in over.items() if k not in ("method", "method_knobs")})
    raw["evaluate"]["attacks"]["run"] = []
    raw["evaluate"]["attacks"]["prompt_set"] = "attack_prompts.csv"
    raw["evaluate"]["report"] = False
    raw["register"]["model_name"] = f"trust-world-{name}"
    return raw


def write_prompt_set(ws: Path, raw: dict) -> None:
    """A small prompt set of the concept's own wordings (the prompt set always runs in evaluate)."""
    from trust.concepts import build_prompt_sets
    from trust.config import ConceptParams, PromptsParams

    sets = build_prompt_sets(ConceptParams(**raw["concept"]), PromptsParams(**raw["prompts"]))
    with (ws / "attack_prompts.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "evaluation_seed", "evaluation_guidance", "categories"])
        for i, r in enumerate(sets["target"]["eval"][:4]):
            w.writerow([r["prompt"], 1000 + i, raw["evaluate"]["guidance"], "heldout"])


def run_one(name: str, kind: str, detect: dict, method: str, workspace: Path, progress: bool) -> dict:
    import torch

    from trust import tracking
    from trust.config import load_params
    from trust.methods.stopping import BarNotReached
    from trust.stages import evaluate, finetune, localize, prompts

    raw = concept_raw(name, kind, detect, method)
    ws = (workspace / name / method.replace("+", "_")).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    write_prompt_set(ws, raw)
    params = load_params(prepare_workspace(ws, raw), root=ws)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws / 'mlflow.db'}"
    tracking.configure(params.tracking, ws)
    gates = params.registry.gates
    out = {"concept": name, "kind": kind, "detect": detect, "method": method,
           "torch_threads": torch.get_num_threads(), "keep": [dict(k) for k in params.concept.keep]}
    t = time.perf_counter()
    out["prompts"] = prompts.run(params, ws)
    localize.run(params, ws)
    out["localize_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    try:
        ft = finetune.run(params, ws, progress=progress)
    except BarNotReached as e:
        out.update(passed=False, bar_reached=False, error=str(e), finetune_s=round(time.perf_counter() - t, 1))
        return out
    out.update(bar_reached=True, finetune_s=round(ft["seconds"], 1), steps=ft["steps"],
               adaptations=(ft.get("bar") or {}).get("adaptations", []))
    t = time.perf_counter()
    m = evaluate.run(params, ws)
    out["evaluate_s"] = round(time.perf_counter() - t, 1)
    n_t = len(m["settings"]["target_prompts"]) * params.evaluate.samples_per_prompt
    keep = {k: {"base": v["base"], "erased": v["tuned"], "drop": v["drop"], "images": v["images"]}
            for k, v in m["keep"].items()}
    margins = [(gates.max_target_rate - m["target_rate"]) * n_t]
    margins += [(gates.max_preservation_drop - v["drop"]) * v["images"] for v in keep.values()]
    worst = max(keep.items(), key=lambda kv: kv[1]["drop"]) if keep else (None, {"drop": 0.0})
    out.update(target={"base": m["target_rate_base"], "erased": m["target_rate"], "images": n_t}, kept=keep,
               worst_keep={"name": worst[0], "drop": worst[1]["drop"]}, margin_images=min(margins),
               passed=m["target_rate"] <= gates.max_target_rate + 1e-9
               and all(v["drop"] <= gates.max_preservation_drop + 1e-9 for v in keep.values()))
    return out


def _f(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def markdown(results: dict) -> str:
    subsets = {n: s for n, _k, _d, s in DEV_SET}
    lines = ["# Development set: one default configuration, every concept (built-in world)", "",
             "`python bench/concept_set.py`: each concept is only a name, a kind and its detector labels (the rest "
             "derived); prompts -> localize -> finetune (erase to a bar on the validation prompts) -> evaluate (held-"
             "out prompts, synonyms included) with params.yaml's settings. Pass = the registration gates: target <= "
             "0.10, every kept concept within 0.10 of base. Margin = held-out images between the result and failing "
             "(min over target and kept concepts). Settings were chosen on the `tune` subset; `report` is the rest.", ""]
    methods = [m for m in METHODS if any(r["method"] == m for r in results.values())]
    for subset in ("tune", "report"):
        rows = [r for r in results.values() if subsets.get(r["concept"]) == subset]
        if not rows:
            continue
        lines += [f"## {subset} subset", "", "| concept | kind | method | pass | target base -> erased | worst kept drop | "
                  "margin (images) | steps | fine-tuning (s) |", "|---|---|---|---|---|---|---|---|---|"]
        for n, k, _d, s in DEV_SET:
            for m in methods:
                r = results.get(f"{n}/{m}")
                if s != subset or r is None:
                    continue
                if not r.get("bar_reached"):
                    lines.append(f"| {n} | {k} | {m} | **FAIL** (budget: bar not reached) | - | - | - | - | "
                                 f"{r.get('finetune_s', '-')} |")
                    continue
                t, w = r["target"], r["worst_keep"]
                lines.append(f"| {n} | {k} | {m} | {'PASS' if r['passed'] else '**FAIL**'} | {_f(t['base'])} -> "
                             f"{_f(t['erased'])} | {w['name']} {w['drop']:+.2f} | {r['margin_images']:.1f} | "
                             f"{r['steps']} | {r['finetune_s']} |")
        lines.append("")
        lines += _summary(rows, methods)
        lines.append("")
    lines += ["## whole set (tune + report)", ""] + _summary(list(results.values()), methods) + [""]
    return "\n".join(lines)


def _summary(rows: list[dict], methods: list[str]) -> list[str]:
    out = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        if rs:
            passed = sum(bool(r.get("passed")) for r in rs)
            margins = [r.get("margin_images", -math.inf) if r.get("bar_reached") else -math.inf for r in rs]
            med = statistics.median(margins)
            out.append(f"- {m}: {passed}/{len(rs)} pass ({100 * passed / len(rs):.0f}%), median margin "
                       + (f"{med:.1f} images" if med > -math.inf else "none (the median concept fails its budget)")
                       + ", longest fine-tuning "
                       f"{max(r.get('finetune_s', 0) for r in rs):.0f} s (a budget failure's time includes set-up)")
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, *_ in DEV_SET if any(r["concept"] == n for r in results.values())]
    methods = [m for m in METHODS if any(r["method"] == m for r in results.values())]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4))
    width = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        colour = f"C{j}"
        for i, n in enumerate(names):
            r = results.get(f"{n}/{m}")
            if r is None:  # not run: no bar (a missing run is not a failure to draw)
                continue
            x = i + j * width
            if r.get("bar_reached"):
                axes[0].bar(x, r["target"]["erased"], width, color=colour)
                axes[1].bar(x, r["worst_keep"]["drop"], width, color=colour)
            else:  # budget failure: nothing measured on held-out prompts, drawn full height, hatched
                for ax in axes:
                    ax.bar(x, 1.0, width, color="none", edgecolor=colour, hatch="//")
    for ax, title in zip(axes, ("held-out target rate (bar 0.10; hatched: budget fail; no bar: not run)",
                                "worst kept drop (bar 0.10)")):
        ax.axhline(0.10, color="k", ls="--", lw=1)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    axes[0].legend(handles=[Patch(color=f"C{j}", label=m) for j, m in enumerate(methods)], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", choices=("tune", "report", "all"), default="all")
    ap.add_argument("--methods", default=",".join(m for m in METHODS if m not in OPTION_ROWS),
                    help=f"comma-separated: {', '.join(METHODS)} (default: all but {', '.join(OPTION_ROWS)})")
    ap.add_argument("--concepts", default=None, help="comma-separated concept names (default: the subset's)")
    ap.add_argument("--force", action="store_true", help="rerun finished (concept, method) pairs")
    ap.add_argument("--workspace", type=Path, default=ROOT / "runs" / "concept_set")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="concept_set")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                    help="only merge these result files into --name's and rewrite its table and plot")
    a = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    chosen = [c for c in DEV_SET if (a.subset == "all" or c[3] == a.subset)
              and (a.concepts is None or c[0] in a.concepts.split(","))]
    store = a.out / f"{a.name}.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    a.out.mkdir(parents=True, exist_ok=True)
    if a.merge is not None:
        for f in a.merge:
            results.update(json.loads(Path(f).read_text()))
        store.write_text(json.dumps(results, indent=2) + "\n")
        (a.out / f"{a.name}.md").write_text(markdown(results))
        plot(results, a.out / f"{a.name}.png")
        return 0
    for name, kind, detect, _subset in chosen:
        for m in methods:
            key = f"{name}/{m}"
            if key in results and not a.force:
                continue
            r = run_one(name, kind, detect, m, a.workspace, a.progress)
            r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            # read again before writing: another run of this benchmark may have added its rows meanwhile
            results = {**(json.loads(store.read_text()) if store.is_file() else {}), key: r}
            store.write_text(json.dumps(results, indent=2) + "\n")
            (a.out / f"{a.name}.md").write_text(markdown(results))
            plot(results, a.out / f"{a.name}.png")
            print(f"{key}: {'PASS' if r.get('passed') else 'FAIL'} target {_f((r.get('target') or {}).get('erased'))} "
                  f"worst {r.get('worst_keep')} margin {r.get('margin_images')} steps {r.get('steps')} "
                  f"ft {r.get('finetune_s')} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
