"""ANT t' sweep through the pipeline, as DVC experiments: `python bench/ant_tprime_dvc.py`.

Queues one `dvc exp run evaluate` experiment per t' (`finetune.method.split_step`), each with
`finetune.method=ant` and the single-concept ANT settings of the method benchmark (`--set` adds
or replaces `-S` overrides), runs the queue (`dvc exp run --run-all`), then reads every
experiment named `tprime-<t'>` back from `dvc exp show --json`: held-out target rate and each
kept concept's rate from the evaluate stage's metrics (no attacks), in one plot and one table.
Targeting `evaluate` registers nothing. `--collect` only reads and plots experiments already run.

Run it in a scratch clone if the project's git should not carry the experiment refs:
`git clone . /tmp/sweep && cd /tmp/sweep && python bench/ant_tprime_dvc.py --out <project>/bench/results`.
Writes ant_tprime_dvc.{json,md,png} into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ANT's single-concept settings on the world (bench/lib/methods.py ANT_RUNS, bench/results/tries/ant_tuning.md).
# The method section is replaced whole (deleted, then added: Hydra would merge a dict into it and keep
# params.yaml's TRUST knobs, which ANT does not have).
ANT_SETTINGS = ("~finetune.method", "+finetune.method={name:ant,scope:attn2,gamma:1e-7}", "finetune.lr=0.005",
                "finetune.preserve_weight=30", "finetune.steps=150", "evaluate.attacks.run=[]")


def _env(project: Path) -> dict:
    env = dict(os.environ)
    # absolute, so that the queue's temp experiment folders find it (see the Makefile's dvc-local)
    env.setdefault("DVC_SITE_CACHE_DIR", str(project.resolve() / ".dvc" / "site-cache"))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("TRUST_NUM_THREADS", "1")
    return env


def dvc(project: Path, *args: str, capture: bool = False) -> str:
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=_env(project), text=True,
                         capture_output=capture)
    if res.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed (exit {res.returncode})"
                         + (f":\n{(res.stdout + res.stderr)[-3000:]}" if capture else ""))
    return res.stdout if capture else ""


def overrides(extra: list[str]) -> list[str]:
    """ANT_SETTINGS with `extra` KEY=VALUE items replacing same-key entries."""
    keyed = {s.partition("=")[0]: s for s in ANT_SETTINGS}
    for s in extra:
        if "=" not in s:
            raise SystemExit(f"--set {s!r}: expected KEY=VALUE")
        keyed[s.partition("=")[0]] = s
    return list(keyed.values())


def queue_and_run(project: Path, splits: list[int], extra: list[str]) -> None:
    sets = overrides(extra)
    for k in splits:
        args = ["exp", "run", "evaluate", "--queue", "-n", f"tprime-{k}"]
        for s in sets:
            # '++': set the key whether or not the params file spells it out (ANT's knobs are defaults);
            # an item that says how itself ('~' delete, '+' add) is passed as it is
            args += ["-S", s if s[0] in "~+" else f"++{s}"]
        args += ["-S", f"++finetune.method.split_step={k}"]  # after the method section is in place
        dvc(project, *args)
    dvc(project, "exp", "run", "--run-all")


def collect(project: Path) -> list[dict]:
    """One row per t' from the successful experiments named tprime-<k> in `dvc exp show --json`."""
    shown = json.loads(dvc(project, "exp", "show", "--json", capture=True))
    rows = {}
    for base in shown:
        for exp in base.get("experiments") or []:
            name = exp.get("name") or ""
            if not name.startswith("tprime-"):
                continue
            rev = exp["revs"][0]
            if rev.get("error"):  # failed: dvc shows the baseline's metrics for it
                continue
            data = rev["data"]
            ft = data["params"]["params.yaml"]["data"]["finetune"]
            m = (data.get("metrics") or {}).get("metrics/evaluate.json", {}).get("data")
            if not m:
                continue  # still queued
            keep = {k: v["tuned"] for k, v in m["keep"].items()}
            when = data.get("timestamp") or ""
            k = ft["method"]["split_step"]
            if k in rows and rows[k]["timestamp"] >= when:
                continue  # an older run of the same t'
            rows[k] = {"timestamp": when,
                "experiment": name, "rev": exp["revs"][0].get("rev"), "split_step": k,
                "method": ft["method"]["name"], "steps": ft["steps"], "lr": ft["lr"], "preserve_weight": ft["preserve_weight"],
                "target_rate": m["target_rate"], "target_rate_base": m["target_rate_base"],
                "keep": keep, "keep_base": {k: v["base"] for k, v in m["keep"].items()},
                "preservation": sum(keep.values()) / len(keep) if keep else float("nan")}
    return [rows[k] for k in sorted(rows)]


def markdown(rows: list[dict], settings: list[str]) -> str:
    heads = sorted({h for r in rows for h in r["keep"]})
    lines = ["# ANT t' sweep as DVC experiments (erase the params.yaml concept through the pipeline)", "",
             "`python bench/ant_tprime_dvc.py`: one `dvc exp run evaluate` per t' with "
             + ", ".join(f"`{s}`" for s in settings) + ". Target: the evaluate stage's held-out target rate; "
             "kept: each kept concept's rate (base in the header). t' is `finetune.method.split_step`, a DDIM-step "
             "index of `finetune.method.ddim_steps` (L_preserve above it, L_erase below).", ""]
    if not rows:
        return "\n".join(lines + ["No experiment named tprime-<t'> has metrics yet."]) + "\n"
    base = rows[0]
    lines += ["| t' | experiment | target (base %.2f) | mean kept | " % base["target_rate_base"]
              + " | ".join(f"{h} (base {base['keep_base'][h]:.2f})" for h in heads) + " |",
              "|---|---|---|---|" + "---|" * len(heads)]
    for r in rows:
        lines.append(f"| {r['split_step']} | {r['experiment']} | {r['target_rate']:.2f} | {r['preservation']:.2f} | "
                     + " | ".join(f"{r['keep'].get(h, float('nan')):.2f}" for h in heads) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [r["split_step"] for r in rows]
    ax.plot(ks, [r["target_rate"] for r in rows], "o-", color="tab:red", label="target rate (erasure)")
    ax.plot(ks, [r["preservation"] for r in rows], "s-", color="tab:green", label="mean kept rate (preservation)")
    for h in sorted({h for r in rows for h in r["keep"]}):
        ax.plot(ks, [r["keep"].get(h) for r in rows], ":", alpha=0.6, label=h)
    ax.axhline(0.10, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("t' (method.split_step, DDIM-step index)")
    ax.set_ylabel("detection rate (held out)")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("ANT t' sweep, DVC experiments")
    ax.legend(fontsize=7, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", default="20,30,40,43,46,49", help="comma-separated t' values")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra or replacing -S override")
    ap.add_argument("--collect", action="store_true", help="only read back experiments already run, and plot")
    ap.add_argument("--project", type=Path, default=Path.cwd(), help="DVC project (default: the current folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args(argv)
    splits = [int(x) for x in a.splits.split(",") if x.strip()]
    if not a.collect:
        queue_and_run(a.project, splits, a.set)
    rows = [r for r in collect(a.project) if r["split_step"] in splits]
    a.out.mkdir(parents=True, exist_ok=True)
    settings = overrides(a.set)
    (a.out / "ant_tprime_dvc.json").write_text(json.dumps({"settings": settings, "runs": rows}, indent=1) + "\n")
    md = markdown(rows, settings)
    (a.out / "ant_tprime_dvc.md").write_text(md)
    if rows:
        plot(rows, a.out / "ant_tprime_dvc.png")
    print(md)
    missing = sorted(set(splits) - {r["split_step"] for r in rows})
    if missing:
        print(f"no metrics for t' = {missing}: see `dvc queue status` / `dvc queue logs <name>`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
