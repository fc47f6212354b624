"""Measure the example concept files: `python bench/concepts.py [NAME ...] [--attacks] [--set KEY=VALUE ...]`.

For each example (`examples/<NAME>.yaml`, or a path to any params file) it runs prompts ->
localize -> finetune -> evaluate in an isolated workspace `runs/examples/<NAME>/` (its own
params.yaml, data/prompts.json, outputs/, metrics/ and MLflow store `mlflow.db`; `models/`,
`data/attacks/` and `examples/` are symlinks to the project's), so the project's own outputs
are never touched. Nothing is registered.

`evaluate.attacks.run` is set to [] (no optimisation attacks; the prompt set still runs) unless
--attacks is given. Results are merged into bench/results/concepts.json (one entry per example
and set of --set overrides, the latest run replaces the previous one; runs with overrides use
the workspace runs/examples/<NAME>__<hash>/) and bench/results/concepts.md is rewritten from it:
target detection rate base -> erased, each kept concept base -> erased, and pass/fail against the
registration gates of the example (target <= register.gates.max_target_rate, every kept concept
at most register.gates.max_preservation_drop below its base rate). Exit 1 when a bar fails.

Results depend on the torch thread count (float summation order): set TRUST_NUM_THREADS
(default 1, as the published numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_EXAMPLES = ("world_combination", "world_conditional")
LINKS = ("models", "data/attacks", "examples")


def example_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p.resolve()
    p = ROOT / "examples" / f"{name}.yaml"
    if not p.is_file():
        raise SystemExit(f"no example {name!r}: expected {p} (or a path to a params file)")
    return p


def apply_overrides(raw: dict, sets: list[str]) -> dict:
    """KEY=VALUE with dotted keys; VALUE is parsed as YAML (numbers, lists, strings)."""
    for item in sets:
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        d = raw
        *parents, last = key.split(".")
        for k in parents:
            d = d.setdefault(k, {})
        d[last] = yaml.safe_load(value)
    return raw


def prepare_workspace(ws: Path, raw: dict) -> Path:
    ws.mkdir(parents=True, exist_ok=True)
    for rel in LINKS:
        link = ws / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to(ROOT / rel, target_is_directory=True)
    path = ws / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def workspace_name(name: str, sets: list[str]) -> str:
    """Runs with overrides get their own workspace (and results entry): the file's own run stays."""
    if not sets:
        return name
    return f"{name}__{hashlib.sha256(chr(0).join(sets).encode()).hexdigest()[:8]}"


def result_key(name: str, sets: list[str]) -> str:
    return name if not sets else f"{name} + {', '.join(sets)}"


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def run_example(name: str, src: Path, args) -> dict:
    import torch

    from trust import tracking
    from trust.config import load_params
    from trust.stages import evaluate, finetune, localize, prompts

    raw = yaml.safe_load(src.read_text())
    if not args.attacks:
        raw.setdefault("evaluate", {}).setdefault("attacks", {})["run"] = []
    apply_overrides(raw, args.set)
    ws = (args.workspace / workspace_name(name, args.set)).resolve()
    params = load_params(prepare_workspace(ws, raw), root=ws)  # the stages run in the workspace
    if not params.uses_world:
        raise SystemExit(f"{name}: model.base is not the built-in world; the evaluate stage measures world models only")
    if len(params.concepts) > 1:
        raise SystemExit(f"{name}: lists {len(params.concepts)} concepts; this table is one concept per row: measure "
                         "it with bench/multi_concept.py (its own table, against erasing them one by one)")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws / 'mlflow.db'}"
    tracking.configure(params.tracking, ws)

    seconds = {}
    t = time.perf_counter()
    counts = prompts.run(params, ws)
    seconds["prompts"] = time.perf_counter() - t
    t = time.perf_counter()
    loc = localize.run(params, ws)
    seconds["localize"] = time.perf_counter() - t
    t = time.perf_counter()
    from trust.methods.stopping import BarNotReached

    try:
        ft = finetune.run(params, ws, progress=not args.quiet)
    except BarNotReached as e:
        print(f"{name}: {e}", flush=True)
        return {"example": name, "kind": params.concept.kind, "concept": params.concept.name,
                "detect": params.concept.detect, "overrides": list(args.set), "pass": False, "bar_reached": False,
                "error": str(e), "seconds": {**seconds, "finetune": round(time.perf_counter() - t, 1)},
                "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    seconds["finetune"] = time.perf_counter() - t
    t = time.perf_counter()
    m = evaluate.run(params, ws)
    seconds["evaluate"] = time.perf_counter() - t

    gates = params.registry.gates
    keep = {k: {"base": v["base"], "erased": v["tuned"], "drop": v["drop"], "images": v["images"],
                "pass": not math.isnan(v["drop"]) and v["drop"] <= gates.max_preservation_drop + 1e-9}
            for k, v in m["keep"].items()}
    target_pass = m["target_rate"] <= gates.max_target_rate + 1e-9
    n_target = len(m["settings"]["target_prompts"])
    return {
        "example": name, "file": str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src),
        "kind": params.concept.kind, "concept": params.concept.name, "detect": params.concept.detect,
        "anchor": params.concept.anchor, "overrides": list(args.set), "attacks": list(params.evaluate.attacks.run),
        "workspace": str(ws.relative_to(ROOT)) if ws.is_relative_to(ROOT) else str(ws),
        "bar": ft.get("bar"),
        "finetune": {"method": params.finetune.method.name, "steps": ft["steps"], "seconds": ft["seconds"], "lr": params.finetune.lr,
                     "preserve_weight": params.finetune.preserve_weight, "modules": list(params.localize.modules)},
        "prompts": counts, "neurons": loc["neurons"],
        "target": {"base": m["target_rate_base"], "erased": m["target_rate"], "prompts": n_target,
                   "images": n_target * params.evaluate.samples_per_prompt, "pass": target_pass},
        "keep": keep,
        "pre_asr": {"base": m["asr_details"]["prompt_set"].get("base_rate"), "erased": m["pre_asr"],
                    "prompt_set": str(params.evaluate.attacks.prompt_set)},
        "asr": {k: v for k, v in m["asr"].items() if k != "prompt_set"},
        "bars": {"max_target_rate": gates.max_target_rate, "max_preservation_drop": gates.max_preservation_drop},
        "pass": target_pass and all(v["pass"] for v in keep.values()),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "torch_threads": torch.get_num_threads(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def markdown(results: dict) -> str:
    lines = ["# Example concepts: erase, keep (built-in world, one run each)", "",
             "`python bench/concepts.py` runs prompts -> localize -> finetune -> evaluate for each example file "
             "in `runs/examples/<name>/`. Held-out prompts, base vs erased model on the same seeds, scored by the "
             "world classifier (an image counts when every head in the label set matches). Bars: target rate "
             "<= max_target_rate, each kept concept at most max_preservation_drop below base.", "",
             "| run | kind | target base -> erased | kept concepts base -> erased (worst drop) | pass |",
             "|---|---|---|---|---|"]
    failed = {n: r for n, r in results.items() if "target" not in r}  # the bar not reached in the budget
    results = {n: r for n, r in results.items() if "target" in r}
    for name, r in failed.items():
        lines.append(f"| {name} | {r['kind']} | - | - (finetune failed: the bar was not reached in its budget) | **FAIL** |")
    for name, r in results.items():
        t, worst = r["target"], max(r["keep"].items(), key=lambda kv: kv[1]["drop"])
        kept = ", ".join(f"{k} {_fmt(v['base'])} -> {_fmt(v['erased'])}" for k, v in r["keep"].items())
        lines.append(f"| {name} | {r['kind']} | {_fmt(t['base'])} -> {_fmt(t['erased'])} | {kept} "
                     f"(worst {worst[0]} {worst[1]['drop']:+.2f}) | {'PASS' if r['pass'] else '**FAIL**'} |")
    lines.append("")
    for name, r in results.items():
        b = r["bars"]
        lines += [f"## {name} ({r['kind']}: erase {r['detect']}) — {'PASS' if r['pass'] else 'FAIL'}", "",
                  f"`{r['file']}`; anchor {r['anchor']!r}; {r['finetune']['method']} {r['finetune']['steps']} steps, "
                  f"lr {r['finetune']['lr']}, preserve_weight {r['finetune']['preserve_weight']}, "
                  f"{r['neurons']} initial concept neurons; torch threads {r['torch_threads']}; "
                  f"attacks run: {r['attacks'] or 'none'}"
                  + (f"; overrides: {', '.join(r['overrides'])}" if r["overrides"] else "")
                  + f"; {r['finished']}." + (f" {r['note']}" if r.get("note") else ""), "",
                  "| | base | erased | bar | pass |", "|---|---|---|---|---|"]
        t = r["target"]
        lines.append(f"| target {r['detect']} ({t['prompts']} prompts, {t['images']} images) | {_fmt(t['base'])} | "
                     f"{_fmt(t['erased'])} | <= {b['max_target_rate']:.2f} | {'yes' if t['pass'] else '**no**'} |")
        for k, v in r["keep"].items():
            lines.append(f"| keep {k} ({v['images']} images) | {_fmt(v['base'])} | {_fmt(v['erased'])} | "
                         f"drop <= {b['max_preservation_drop']:.2f} (drop {v['drop']:+.2f}) | "
                         f"{'yes' if v['pass'] else '**no**'} |")
        p = r["pre_asr"]
        lines.append(f"| pre-ASR, `{p['prompt_set']}` | {_fmt(p['base'])} | {_fmt(p['erased'])} | (not gated) | |")
        for k, v in r["asr"].items():
            lines.append(f"| ASR {k} | | {_fmt(v)} | (not gated) | |")
        s = r["seconds"]
        lines += ["", "Time (s): " + ", ".join(f"{k} {v}" for k, v in s.items()) + f", total {sum(s.values()):.0f}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("examples", nargs="*", default=list(DEFAULT_EXAMPLES),
                    help=f"example names under examples/ or params file paths (default: {' '.join(DEFAULT_EXAMPLES)})")
    ap.add_argument("--attacks", action="store_true", help="keep evaluate.attacks.run from the file (slow)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter, e.g. --set finetune.steps=800 (repeatable)")
    ap.add_argument("--workspace", type=Path, default=ROOT / "runs" / "examples")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))

    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "concepts.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    ok = True
    for ex in args.examples:
        src = example_path(ex)
        name = src.stem
        r = run_example(name, src, args)
        key = result_key(name, args.set)
        results[key] = r
        ok &= r["pass"]
        store.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
        (args.out / "concepts.md").write_text(markdown(results))
        print(markdown({key: r}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
