"""Three world concepts erased at once with ANT: `python bench/ant_multi.py [--quick]`.

Erases "circle", "yellow" (colour) and "triangle on a striped background" three ways (fusion: one
LoRA per concept fused in closed form, paper Eq. 7; sequential: concept 1, then 2, then 3 on the
result; joint: one LoRA on all three concepts' prompts) and reports each target's detection rate
and each kept concept's (squares, crosses, red/green/blue, triangles on plain backgrounds) against
the base model. Settings: params.yaml's finetune section (ant_* fields, lr, steps, batch_size,
preserve_weight), overridden by --set. Writes bench/results/ant_multi.{md,json}.
See bench/lib/ant_multi.py for the prompts and the strategies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="ant_multi", help="output stem: OUT/NAME.{md,json}")
    ap.add_argument("--set", default="", help="finetune overrides 'k=v k=v' (values read as YAML), e.g. 'lr=0.005 steps=300'")
    ap.add_argument("--target-set", action="append", default=[], metavar="NAME:'k=v k=v'",
                    help="finetune overrides for one target's LoRA only, e.g. \"yellow:ant_split_step=49 ant_eta=2\"")
    ap.add_argument("--strategies", default="fusion,sequential,joint",
                    help="of fusion, fusion:tokens, fusion:all (same LoRAs, that fusion_positions), fusion:all@0.3 "
                         "(and that fusion beta), sequential, joint")
    ap.add_argument("--targets", default=None, help="comma-separated subset of the target names (default: all three)")
    ap.add_argument("--images", type=int, default=32, help="held-out images per target and per kept concept")
    ap.add_argument("--references", type=int, default=16, help="reference images per concept")
    ap.add_argument("--eval-seed", type=int, default=0,
                    help="seed of the held-out images' noise (another value: a fresh sample to confirm a setting "
                         "picked on seed 0's images); training is seeded by finetune.seed alone")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 2 images, 4 sampling steps")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT/NAME.md from OUT/NAME.json")
    a = ap.parse_args(argv)
    if a.render:
        md = render(json.loads((a.out / f"{a.name}.json").read_text()))
        (a.out / f"{a.name}.md").write_text(md)
        print(md)
        return 0

    import torch

    torch.set_num_threads(int(os.environ.get("TRUST_NUM_THREADS", "1")))
    from ant_sweep import parse_overrides

    from trust.config import load_params
    from bench.lib.ant_multi import DEFAULT_TARGETS, MultiSettings, _with, compare
    from trust.models import load_model
    from trust.world.classifier import ConceptClassifier

    params = load_params(a.params, root=ROOT)
    over = parse_overrides(a.set)[0] if a.set.strip() else {}
    if a.quick:
        over.setdefault("steps", 2)
    ft = _with(params.finetune, over)  # ANT+fusion's LoRA knobs; old ant_* names accepted
    settings = MultiSettings(images=2 if a.quick else a.images, sample_steps=4 if a.quick else params.evaluate.steps,
                             guidance=params.evaluate.guidance, references=4 if a.quick else a.references,
                             seed=a.eval_seed)
    world = load_model(ROOT / params.world.model_dir)
    clf = ConceptClassifier.load(ROOT / params.world.classifier_dir)
    t0 = time.perf_counter()
    targets = [dataclasses.replace(t, finetune=dict(t.finetune)) for t in DEFAULT_TARGETS]
    for item in a.target_set:
        name, _, sets = item.partition(":")
        hit = [t for t in targets if t.name == name.strip()]
        if not hit or not sets.strip():
            raise SystemExit(f"--target-set {item!r}: expected NAME:'k=v ...' with NAME of {[t.name for t in targets]}")
        hit[0].finetune.update(parse_overrides(sets)[0])
    if a.targets:
        want = [t.strip() for t in a.targets.split(",") if t.strip()]
        targets = [t for t in targets if t.name in want]
        if len(targets) != len(want):
            raise SystemExit(f"unknown target in {want}; targets: {[t.name for t in DEFAULT_TARGETS]}")
    res = compare(world, clf, ft, params.prompts, targets=targets,
                  strategies=[s.strip() for s in a.strategies.split(",") if s.strip()], settings=settings)
    res["wall_s"] = time.perf_counter() - t0
    res["overrides"] = over
    res["command"] = " ".join(["python bench/ant_multi.py", *(f"'{x}'" if " " in x else x for x in sys.argv[1:])])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = render(res)
    (a.out / f"{a.name}.md").write_text(md)
    print(md)
    return 0


def render(res: dict) -> str:
    from bench.lib.ant_multi import markdown

    cmd = res.get("command") or f"python bench/ant_multi.py --set '{' '.join(f'{k}={v}' for k, v in res['overrides'].items())}'"
    return markdown(res) + f"\nWall-clock {res['wall_s']:.0f} s (references {res['references_s']:.0f} s). " \
                           f"Command: `{cmd}`.\n"


if __name__ == "__main__":
    raise SystemExit(main())
