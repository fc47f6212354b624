"""Attack benchmark on one world concept: `python bench/attacks.py [--quick]`.

Trains the base model's erasures (a deliberately weak ESD-x, TRUST-CIP, ESD-x, ESD-u, SalUn, UCE, RECE) from
params.yaml's concept in one process, attacks each with UnlearnDiffAtk, P4D and Ring-A-Bell on the
prompt set `evaluate.attacks.prompt_set`, and writes bench/results/attacks.{md,json,png}.
See bench/lib/attacks.py for what is measured and how.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps, one prompt, tiny attack budgets")
    ap.add_argument("--max-prompts", type=int, default=None,
                    help="prompts each attack attacks (default evaluate.attacks.max_prompts; --quick: 1)")
    ap.add_argument("--weak-steps", default=None,
                    help="comma-separated candidate step counts for the weak ESD-x (default 5,10,15,20)")
    ap.add_argument("--weak-max-pre-asr", type=float, default=None,
                    help="weak ESD-x: first candidate whose full-set pre-ASR is at most this (default 0.5)")
    ap.add_argument("--salun-steps", type=int, default=600, help="SalUn's fixed step budget")
    ap.add_argument("--runs", default=None,
                    help="comma-separated row labels to run (default: every row), e.g. base,UCE,RECE; use --out "
                         "for a partial run so the full table is not replaced")
    ap.add_argument("--bar-max-steps", type=int, default=600, help="cap for ESD-x / ESD-u trained to the bar")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    from bench.lib.attacks import run_from_params

    weak = tuple(int(x) for x in a.weak_steps.split(",") if x.strip()) if a.weak_steps else None
    out = a.out if not a.quick or a.out != ROOT / "bench" / "results" else ROOT / ".cache" / "bench-attacks-quick"
    result = run_from_params(a.params, out, ROOT, quick=a.quick, max_prompts=a.max_prompts, weak_candidates=weak,
                             weak_max_pre_asr=a.weak_max_pre_asr, salun_steps=a.salun_steps,
                             bar_max_steps=a.bar_max_steps,
                             only=[x.strip() for x in a.runs.split(",") if x.strip()] if a.runs else None)
    print((out / "attacks.md").read_text())
    return 0 if result["runs"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
