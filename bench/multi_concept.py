"""Eight colour-shape pairs erased in one run, against erasing them one by one:
`python bench/multi_concept.py [--rows joint,alone] [--force]`.

The world has 16 colour-shape pairs; ERASED holds 8 of them (every colour and every shape twice), the
other 8 are what the run must keep. Row `joint`: one workspace, `concept:` the list of the 8 pairs (each
written as a new user would: name, kind, detect), the real stages prompts -> localize -> finetune (one
TRUST run on every concept's prompts, erase to a bar over every target) -> evaluate, with params.yaml's
settings (finetune.max_seconds is per concept; a joint step draws finetune.batch_size rows of every
concept); only the attack part is a small prompt set (no optimisation attacks), as
bench/concept_set.py does. Rows
`alone:<pair>`: each pair erased by itself, the same stages and settings, its own workspace.

Bars (issue 15): each erased pair <= max_target_rate on its held-out prompts and each of the 8 other pairs
within max_preservation_drop of base, in the joint run; wall-clock per concept (all four stages) lower
in the joint run than one by one, both measured by this script in one invocation. Results merge into
bench/results/multi_concept.json; multi_concept.md and the joint run's before/after grid
(multi_concept_grid.png) are rewritten. TRUST_NUM_THREADS (default 1) threads.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.concepts import prepare_workspace  # noqa: E402

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
# colour i with shape i and shape i+1: every colour and every shape erased twice, kept twice
ERASED = [(COLOURS[i], SHAPES[(i + k) % 4]) for i in range(4) for k in (0, 1)]
KEPT = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in ERASED]


def pair_spec(colour: str, shape: str) -> dict:
    return {"name": f"{colour} {shape}", "kind": "combination", "detect": {"shape": shape, "colour": colour}}


def row_raw(pairs: list[tuple[str, str]], mode: str = "joint") -> dict:
    """params.yaml with `concept` the pairs (one: a mapping), finetune.multi.mode `mode`, a small attack
    prompt set, no report."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["finetune"]["multi"]["mode"] = mode
    specs = [pair_spec(*p) for p in pairs]
    raw["concept"] = specs if len(specs) > 1 else specs[0]
    n = len(specs)
    raw["evaluate"]["attacks"]["run"] = []
    raw["evaluate"]["attacks"]["prompt_set"] = "attack_prompts.csv"
    raw["evaluate"]["report"] = False
    raw["register"]["model_name"] = "trust-world-" + (f"{n}-pairs" if n > 1 else specs[0]["name"].replace(" ", "-"))
    return raw


def write_prompt_set(ws: Path, params) -> None:
    """Two held-out prompts of each concept (the prompt set always runs in evaluate)."""
    from trust.concepts import build_run_sets

    sets = build_run_sets(params.concepts, params.prompts, world=True)
    rows = [r for i in range(len(params.concepts)) for r in [x for x in sets["target"]["eval"]
                                                             if x.get("concept", 0) == i][:2]]
    with (ws / "attack_prompts.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "evaluation_seed", "evaluation_guidance", "categories"])
        for i, r in enumerate(rows):
            w.writerow([r["prompt"], 1000 + i, params.evaluate.guidance, "heldout"])


def run_row(key: str, pairs: list[tuple[str, str]], workspace: Path, progress: bool, mode: str = "joint") -> dict:
    import torch

    from trust import tracking
    from trust.config import load_params
    from trust.methods.stopping import BarNotReached
    from trust.stages import evaluate, finetune, localize, prompts

    ws = (workspace / key.replace(":", "_").replace(" ", "-")).resolve()
    if ws.exists():
        shutil.rmtree(ws)  # a fresh run: no resumed checkpoint, no stale outputs
    raw = row_raw(pairs, mode)
    raw["evaluate"]["attacks"]["prompt_set"] = str(ws / "attack_prompts.csv")
    path = prepare_workspace(ws, raw)
    params = load_params(path, root=ws, check_files=False)
    write_prompt_set(ws, params)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws / 'mlflow.db'}"
    tracking.configure(params.tracking, ws)
    gates = params.registry.gates
    out = {"row": key, "concepts": [c.name for c in params.concepts], "torch_threads": torch.get_num_threads(),
           "kept": [dict(k) for k in params.kept], "seconds": {}}
    t0 = time.perf_counter()
    for name, stage in (("prompts", prompts.run), ("localize", localize.run)):
        t = time.perf_counter()
        stage(params, ws)
        out["seconds"][name] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    try:
        ft = finetune.run(params, ws, progress=progress)
    except BarNotReached as e:
        out["seconds"]["finetune"] = round(time.perf_counter() - t, 1)
        out.update(passed=False, bar_reached=False, error=str(e), total_s=round(time.perf_counter() - t0, 1))
        return out
    out["seconds"]["finetune"] = round(time.perf_counter() - t, 1)
    out.update(bar_reached=True, steps=ft["steps"], adaptations=len((ft.get("bar") or {}).get("adaptations", [])))
    t = time.perf_counter()
    m = evaluate.run(params, ws)
    out["seconds"]["evaluate"] = round(time.perf_counter() - t, 1)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    targets = m.get("targets") or {params.concept_name: {"base": m["target_rate_base"], "tuned": m["target_rate"]}}
    out["targets"] = targets
    out["keep"] = {k: {"base": v["base"], "tuned": v["tuned"], "drop": v["drop"]} for k, v in m["keep"].items()}
    out["passed"] = (all(v["tuned"] <= gates.max_target_rate + 1e-9 for v in targets.values())
                     and all(v["drop"] <= gates.max_preservation_drop + 1e-9 for v in out["keep"].values()))
    if len(pairs) > 1:
        shutil.copy2(ws / "outputs" / "evaluate" / "before_after.png",
                     ROOT / "bench" / "results" / f"multi_concept_{key}_grid.png")
    return out


def _f(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(results: dict, gate_target: float = 0.10, gate_drop: float = 0.10) -> str:
    lines = ["# Eight colour-shape pairs in one run vs one by one (bench/multi_concept.py)", "",
             f"Erased: {', '.join(f'{c} {s}' for c, s in ERASED)}. Kept (the other 8): "
             f"{', '.join(f'{c} {s}' for c, s in KEPT)}. World, held-out prompts, params.yaml's settings "
             "(TRUST, erase to a bar); torch threads 1.", ""]
    for key, how in (("joint", "one TRUST training on every pair's prompts (finetune.multi.mode joint)"),
                     ("fused", "TRUST on each pair alone, the edits fused in closed form (finetune.multi.mode fused)")):
        row = results.get(key)
        if not row:
            continue
        lines += [f"## {key}: {how}", "", f"Steps {row.get('steps', '-')}, stage seconds {row['seconds']}, "
                  f"total {row.get('total_s', '-')} s." + (f" **Bar not reached**: {row['error']}" if row.get("error")
                                                          else ""), ""]
        if row.get("earlier_tries"):
            lines += ["How the joint training got here (the same 8 pairs, each try's validation checks):", ""]
            lines += [f"- {k}: {v}" for k, v in row["earlier_tries"].items()] + [""]
        if row.get("note"):
            lines += [f"Note: {row['note']}.", ""]
        if row.get("fusion_beta_sweep"):
            lines += [f"{row.get('per_concept_training', '')}; the fused weights on the validation prompts, by "
                      "finetune.multi.fusion_beta (the same 8 edits fused again: the rerun reuses them):", "",
                      "| fusion_beta | what missed the bar |", "|---|---|"]
            lines += [f"| {k} | {v['missed']} |" for k, v in row["fusion_beta_sweep"].items()] + [""]
        if row.get("targets"):
            lines += ["| erased pair | base | erased | <= %.2f |" % gate_target, "|---|---|---|---|"]
            lines += [f"| {n} | {_f(v['base'])} | {_f(v['tuned'])} | {'yes' if v['tuned'] <= gate_target + 1e-9 else 'NO'} |"
                      for n, v in row["targets"].items()]
            lines += ["", "| kept | base | erased | drop | within %.2f |" % gate_drop, "|---|---|---|---|---|"]
            lines += [f"| {k} | {_f(v['base'])} | {_f(v['tuned'])} | {v['drop']:+.2f} | "
                      f"{'yes' if v['drop'] <= gate_drop + 1e-9 else 'NO'} |" for k, v in row["keep"].items()]
            lines += ["", f"![{key} run: base vs erased](multi_concept_{key}_grid.png)", ""]
    alone = {k: v for k, v in results.items() if k.startswith("alone:")}
    if alone:
        lines += ["## One by one", "", "| pair | passed | steps | finetune s | total s | erased | worst kept drop |",
                  "|---|---|---|---|---|---|---|"]
        for k, v in alone.items():
            t = next(iter((v.get("targets") or {}).values()), {})
            worst = max((x["drop"] for x in (v.get("keep") or {}).values()), default=None)
            lines.append(f"| {k.removeprefix('alone:')} | {'PASS' if v.get('passed') else 'FAIL'} | {v.get('steps', '-')} | "
                         f"{v['seconds'].get('finetune', '-')} | {v.get('total_s', '-')} | {_f(t.get('tuned'))} | "
                         f"{_f(worst)} |")
        lines.append("")
    done = [v for v in alone.values() if v.get("total_s")]
    if done:
        per_alone = sum(v["total_s"] for v in done) / len(done)
        lines += ["## Wall-clock per concept (all four stages)", "",
                  f"One by one: {per_alone:.1f} s per concept (mean of {len(done)} of {len(ERASED)} runs; a run that "
                  "missed its bar counts its time to the failure)."]
        for key in ("joint", "fused"):
            row = results.get(key)
            if row and row.get("total_s"):
                per = row["total_s"] / len(ERASED)
                lines.append(f"{key}: {row['total_s']:.0f} s / {len(ERASED)} = {per:.1f} s per concept, "
                             f"{per / per_alone:.2f}x one by one" + ("." if row.get("passed") else
                                                                      " (its bar was not reached: no result)."))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="joint,fused,alone",
                    help="joint, fused (finetune.multi.mode), alone (every pair alone) or alone:<colour shape>")
    ap.add_argument("--force", action="store_true", help="rerun finished rows")
    ap.add_argument("--workspace", type=Path, default=ROOT / "runs" / "multi_concept")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite the table from the JSON")
    a = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    store = a.out / "multi_concept.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    if a.render:
        (a.out / "multi_concept.md").write_text(markdown(results))
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    rows: list[tuple[str, list]] = []
    for r in (x.strip() for x in a.rows.split(",") if x.strip()):
        if r in ("joint", "fused"):
            rows.append((r, ERASED))
        elif r == "alone":
            rows += [(f"alone:{c} {s}", [(c, s)]) for c, s in ERASED]
        elif r.startswith("alone:") and tuple(r.removeprefix("alone:").split()) in ERASED:
            rows.append((r, [tuple(r.removeprefix("alone:").split())]))
        else:
            raise SystemExit(f"--rows: unknown row {r!r}; use joint, alone or alone:<colour shape> of {ERASED}")
    a.out.mkdir(parents=True, exist_ok=True)
    for key, pairs in rows:
        if key in results and not a.force:
            continue
        r = run_row(key, pairs, a.workspace, a.progress, mode=key if key in ("joint", "fused") else "joint")
        r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        results = {**(json.loads(store.read_text()) if store.is_file() else {}), key: r}  # another process's rows too
        store.write_text(json.dumps(results, indent=2) + "\n")
        (a.out / "multi_concept.md").write_text(markdown(results))
        print(f"{key}: {'PASS' if r.get('passed') else 'FAIL'} total {r.get('total_s')} s steps {r.get('steps')}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
