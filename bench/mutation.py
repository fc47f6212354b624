"""Mutation score of the modules where a silent bug costs the most: `make mutate`.

`make mutate` runs mutmut (its scope, tests and exclusions: `[tool.mutmut]` in pyproject.toml)
and then this script, which reads mutmut's results (`mutmut results --all true`, run in the
project root after `mutmut run`) and writes bench/results/mutation.{json,md}:

    score = killed / (mutants - equivalent - skipped)

A mutant a timeout stopped counts as killed (the change made a test hang: it was noticed). A
mutant no selected test reaches ("no tests") counts against the score, as a survivor does:
nothing would notice that change. Survivors that are equivalent (the change cannot alter any
behaviour) are listed, each with its reason, in bench/mutation_equivalent.toml; an entry there
whose mutant was killed or no longer exists is reported as stale. Exit 1 below the bar (80%).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.toml"
RESULTS = ROOT / "bench" / "results"
BAR = 0.80
KILLED = {"killed", "timeout", "caught by type check"}
LINE = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+): (?P<status>.+?)\s*$")


def read_results(text: str) -> dict[str, str]:
    """`mutmut results --all true` output -> {mutant name: status}."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out[m["name"]] = m["status"]
    return out


def module_of(mutant: str) -> str:
    """trust.registry.x_gate_results__mutmut_3 -> trust.registry (methods: `xǁClassǁname`)."""
    return re.split(r"\.x(?:_|ǁ)", mutant, maxsplit=1)[0]


def score(statuses: dict[str, str], equivalent: dict[str, str], partial: bool = False) -> dict:
    """`partial`: score the mutants checked so far (an interrupted run); such a score never
    passes the bar, and the unchecked ones are counted per module."""
    if not statuses:
        raise SystemExit("no mutmut results: run `make mutate` (or `mutmut run`) first")
    unchecked = sorted(n for n, s in statuses.items() if s == "not checked")
    if unchecked and not partial:
        raise SystemExit(f"{len(unchecked)} mutants were not checked (an interrupted run?): rerun `make mutate`, "
                         "or score what was checked with --partial")
    per: dict[str, Counter] = defaultdict(Counter)
    survivors, stale = [], []
    for name, status in sorted(statuses.items()):
        mod = module_of(name)
        if status == "not checked":
            per[mod]["not checked"] += 1
            continue
        per[mod]["mutants"] += 1
        if status in KILLED:
            per[mod]["killed"] += 1
            if name in equivalent:
                stale.append(f"{name}: listed as equivalent but {status}")
        elif status == "skipped":
            per[mod]["skipped"] += 1
        elif name in equivalent and status == "survived":
            per[mod]["equivalent"] += 1
        else:
            per[mod]["survived" if status == "survived" else "no tests" if status == "no tests" else "other"] += 1
            survivors.append({"mutant": name, "status": status})
    stale += [f"{name}: listed as equivalent but no such mutant" for name in sorted(set(equivalent) - set(statuses))]
    total = sum(per.values(), Counter())

    def ratio(c: Counter) -> float:
        n = c["mutants"] - c["equivalent"] - c["skipped"]
        return c["killed"] / n if n else 1.0

    return {"score": ratio(total), "bar": BAR, "passed": ratio(total) >= BAR and not unchecked,
            "partial": bool(unchecked), "totals": dict(total),
            "modules": {m: {**dict(c), "score": ratio(c)} for m, c in sorted(per.items())},
            "survivors": survivors, "equivalent": {n: equivalent[n] for n in sorted(equivalent) if n in statuses},
            "stale_equivalents": stale}


def markdown(r: dict) -> str:
    t = r["totals"]
    lines = ["# Mutation score (`make mutate`)", "",
             f"**{100 * r['score']:.1f}%** killed of the non-equivalent mutants (bar {100 * r['bar']:.0f}%: "
             f"{'met' if r['passed'] else 'NOT met'}): {t.get('killed', 0)} killed, {t.get('survived', 0)} survived, "
             f"{t.get('no tests', 0)} reached by no selected test, {t.get('equivalent', 0)} equivalent, of "
             f"{t.get('mutants', 0)} mutants checked.", ""]
    if r.get("partial"):
        lines += [f"**Partial run**: {t.get('not checked', 0)} mutants were not checked (per module below); "
                  "the score is of the checked ones and does not count as meeting the bar.", ""]
    lines += [
             "Scope, tests and exclusions: `[tool.mutmut]` in pyproject.toml; equivalent mutants and why: "
             "bench/mutation_equivalent.toml.", "",
             "| module | mutants checked | killed | survived | no tests | equivalent | score | not checked |",
             "|---|---|---|---|---|---|---|---|"]
    for m, c in r["modules"].items():
        score = f"{100 * c['score']:.1f}%" if c.get("mutants") else "-"
        lines.append(f"| {m} | {c.get('mutants', 0)} | {c.get('killed', 0)} | {c.get('survived', 0)} | {c.get('no tests', 0)} "
                     f"| {c.get('equivalent', 0)} | {score} | {c.get('not checked', 0)} |")
    lines += ["", "## Survivors (not killed, not listed as equivalent)", ""]
    lines += [f"- `{s['mutant']}`: {s['status']} (`mutmut show {s['mutant']}`)" for s in r["survivors"]] or ["none"]
    if r["stale_equivalents"]:
        lines += ["", "## Stale entries in bench/mutation_equivalent.toml", ""] + [f"- {s}" for s in r["stale_equivalents"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, help="a saved `mutmut results --all true` output (default: ask mutmut)")
    ap.add_argument("--partial", action="store_true", help="score an interrupted run's checked mutants (never passes)")
    args = ap.parse_args(argv)
    if args.results:
        text = args.results.read_text()
    else:
        mutmut = Path(sys.executable).with_name("mutmut")
        text = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    equivalent = tomllib.loads(EQUIVALENT.read_text()).get("equivalent", {}) if EQUIVALENT.is_file() else {}
    r = score(read_results(text), equivalent, partial=args.partial)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(r, indent=1) + "\n")
    (RESULTS / "mutation.md").write_text(markdown(r))
    print(markdown(r))
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
