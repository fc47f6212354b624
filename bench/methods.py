"""Benchmark the unlearning methods on one world concept: `python bench/methods.py [--quick]`.

Same as `trust bench`. Trains TRUST-CIP, TRUST-CSR, TRUST (static mask), ESD-x, ESD-u, SalUn,
ConceptPrune, full fine-tuning, UCE, RECE, ANT and ANT+fusion from params.yaml's concept; writes
bench/results/methods.{md,json,png}. A subset: `--runs ANT,ANT+fusion --name NAME` (writes NAME.{md,json,png}).
See bench/lib/methods.py for what is measured and how.
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
    ap.add_argument("--steps", type=int, default=None, help="step budget per method (default 200; --quick: 4)")
    ap.add_argument("--check-every", type=int, default=None, help="check the erasure bar every N steps")
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps, tiny samples")
    ap.add_argument("--runs", default=None, help="comma-separated labels, e.g. TRUST-CIP,SalUn")
    ap.add_argument("--no-stop-at-bar", action="store_true", help="train the full budget even after the bar")
    ap.add_argument("--name", default="methods", help="output file stem: OUT/NAME.{md,json,png}")
    ap.add_argument("--sample-steps", type=int, default=None, help="DDIM steps of the detection samples (default 10)")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    from bench.lib.methods import run_from_params

    result = run_from_params(a.params, a.out, a.steps, a.quick, a.check_every, a.runs, not a.no_stop_at_bar,
                             root=ROOT, name=a.name, sample_steps=a.sample_steps)
    print((a.out / f"{a.name}.md").read_text())
    return 0 if result["runs"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
