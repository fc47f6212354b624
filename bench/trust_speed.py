"""Where a TRUST fine-tuning second goes, and what the target pool saves, side by side in one run:
`python bench/trust_speed.py [--concept circle-on-plain] [--steps 80] [--pool 320]`.

One development-set concept (bench/concept_set.py's DEV_SET) is prepared with the real prompts and
localize stages in `runs/trust_speed/<concept>/`; then, on the same data and the same starting mask,
TRUST with params.yaml's settings runs `--steps` steps twice: every frozen target fresh
(`target_pool: 0`) and with `target_pool: --pool`. Each step's time is split by timing the frozen
UNet's forwards (the forget target's anchor/concept predictions and the preservation target), the
trained UNet's forwards (forget and preservation rows; re-estimation's are inside its own line), and
the rest (backward, masked Adam, the CIP term); re-estimation on its own line. One erase-to-a-bar
check (the validation images at the check's sampling steps) is timed too: it is what a check costs
every `finetune.to_bar.check_every` steps. The ratio pooled / plain is measured in the same process,
one after the other, with the same thread count (TRUST_NUM_THREADS, default 1).

Writes bench/results/trust_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(concept: str, ws_root: Path):
    from bench.concept_set import DEV_SET, concept_raw, write_prompt_set
    from bench.concepts import prepare_workspace
    from trust.config import load_params
    from trust.stages import localize, prompts

    row = next((c for c in DEV_SET if c[0] == concept), None)
    if row is None:
        raise SystemExit(f"--concept {concept!r}: not in the development set ({', '.join(c[0] for c in DEV_SET)})")
    name, kind, detect, _ = row
    raw = concept_raw(name, kind, detect, "TRUST")
    ws = (ws_root / name).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    write_prompt_set(ws, raw)
    params = load_params(prepare_workspace(ws, raw), root=ws)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws / 'mlflow.db'}"
    from trust import tracking

    tracking.configure(params.tracking, ws)
    prompts.run(params, ws)
    localize.run(params, ws)
    return params, ws


def timed_run(params, ws: Path, steps: int, pool: int) -> dict:
    import torch

    from trust.methods.data import ForgetData
    from trust.methods.loop import build_method
    from trust.methods.stopping import BarCheck
    from trust.models import load_model
    from trust.stages import finetune as F
    from trust.stages import localize, prompts

    ft = params.finetune.updated(target_pool=pool)
    torch.manual_seed(ft.seed)
    parts = load_model(params.model.base)
    sets = prompts.load(ws)
    t0 = time.perf_counter()
    data = ForgetData.build(parts, sets["target"]["train"], ft.references, ft.seed)
    method = build_method(parts, data, ft, params.localize,
                          keep=lambda: F.preserve_data(parts, sets["preserve"]["train"], ft),
                          initial_mask=localize.load_mask(ws), resources=localize.scorer_resources(params))
    setup_s = time.perf_counter() - t0
    spent = {"frozen": 0.0, "trained": 0.0}
    in_reest = [False]

    def wrap(module, key):
        forward = module.forward

        def timed(*a, **k):
            if in_reest[0]:
                return forward(*a, **k)
            t = time.perf_counter()
            out = forward(*a, **k)
            spent[key] += time.perf_counter() - t
            return out

        module.forward = timed

    wrap(method.frozen, "frozen")
    wrap(method.parts.unet, "trained")
    reestimate = method.reestimate

    def timed_reestimate(step):
        in_reest[0] = True
        try:
            return reestimate(step)
        finally:
            in_reest[0] = False

    method.reestimate = timed_reestimate
    t0 = time.perf_counter()
    reest = 0.0
    for s in range(steps):
        reest += method.step(s).get("reestimate_s", 0.0)
    total = time.perf_counter() - t0
    snap = dict(spent)  # the check below samples through the same UNets: not step time
    rest = total - snap["frozen"] - snap["trained"] - reest
    gates = params.registry.gates
    bar = BarCheck(method, F.val_groups(params, ws, sets), ft.to_bar, gates.max_target_rate,
                   gates.max_preservation_drop, seed=ft.seed, guidance=params.evaluate.guidance)
    t0 = time.perf_counter()
    bar.rates()
    check_s = time.perf_counter() - t0
    per = lambda x: round(x / steps, 4)  # noqa: E731
    return {"target_pool": pool, "steps": steps, "setup_s": round(setup_s, 2), "seconds": round(total, 2),
            "step_s": per(total), "frozen_s_per_step": per(snap["frozen"]), "trained_fwd_s_per_step": per(snap["trained"]),
            "backward_update_s_per_step": per(rest), "reestimate_s_per_step": per(reest),
            "check_s": round(check_s, 2), "check_images": len(bar.prompts), "check_every": ft.to_bar.check_every,
            "check_in_steps": round(check_s / (total / steps), 1)}


def markdown(r: dict) -> str:
    plain, pooled = r["plain"], r["pooled"]
    rows = [("step (s)", "step_s"), ("  frozen UNet forwards", "frozen_s_per_step"),
            ("  trained UNet forwards", "trained_fwd_s_per_step"), ("  backward, masked Adam, CIP", "backward_update_s_per_step"),
            ("  mask re-estimation", "reestimate_s_per_step")]
    out = [f"# TRUST's speed: where a step goes, and the target pool ({r['concept']}, {r['steps']} steps, "
           f"{r['torch_threads']} torch thread(s))", "",
           f"`python bench/trust_speed.py --concept {r['concept']} --steps {r['steps']} --pool {r['pool']}`; both rows in "
           "one process, one after the other, same data and starting mask (params.yaml's TRUST settings).", "",
           f"| per step | fresh targets (target_pool 0) | target_pool {r['pool']} | ratio |", "|---|---|---|---|"]
    for label, k in rows:
        a, b = plain[k], pooled[k]
        out.append(f"| {label} | {a:.3f} | {b:.3f} | {b / a:.2f}x |" if a else f"| {label} | {a:.3f} | {b:.3f} | - |")
    out += ["", f"- one erase-to-a-bar check: {plain['check_s']:.1f} s ({plain['check_images']} validation images at the "
            f"check's sampling steps) = {plain['check_in_steps']} fresh-target steps, every {plain['check_every']} steps",
            f"- set-up (reference and preservation images, the method's own state): {plain['setup_s']:.1f} s",
            f"- **pooled / plain step time: {pooled['step_s'] / plain['step_s']:.2f}x**; per {plain['check_every']}-step block "
            f"with its check: {(pooled['step_s'] * plain['check_every'] + pooled['check_s']) / (plain['step_s'] * plain['check_every'] + plain['check_s']):.2f}x",
            ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concept", default="circle-on-plain")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--pool", type=int, default=320)
    ap.add_argument("--workspace", type=Path, default=ROOT / "runs" / "trust_speed")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    params, ws = prepare(a.concept, a.workspace)
    r = {"concept": a.concept, "steps": a.steps, "pool": a.pool, "torch_threads": torch.get_num_threads(),
         "params": yaml.safe_load((ws / "params.yaml").read_text())["finetune"]}
    r["plain"] = timed_run(params, ws, a.steps, 0)
    r["pooled"] = timed_run(params, ws, a.steps, a.pool)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "trust_speed.json").write_text(json.dumps(r, indent=2) + "\n")
    (a.out / "trust_speed.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
