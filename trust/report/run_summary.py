"""What a finished `unlearn` run says, once: the verdict, its gates, the numbers behind them and
where the version stands now. One summary feeds the terminal panel (`trust run`), the flow's log
and the Prefect Markdown artifact, so they cannot disagree.

The aliases come from the registry's *current* state (another run may have moved `candidate` or
`production` since this version was registered), read through `aliases_of`; when the registry
cannot be read the summary says so instead of showing the aliases recorded at registration.
Results are read only when the stage that writes them ran in this flow run or is up to date: a
run that failed in `evaluate` does not show the previous run's registration as its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from trust.stages import paths

PASSED, FAILED, INCOMPLETE = "PASSED", "FAILED", "INCOMPLETE"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def registry_aliases(model_name: str, version: int | str, uri: str | None = None) -> list[str]:
    """The version's aliases as the MLflow registry at `uri` (None: MLflow's current URI) holds them now.
    A local sqlite store is read directly (trust/tracking_store.py: no MLflow import, ~5 s less); where
    that read cannot be made (another store, a schema without MLflow's alias table) MLflow's client
    reads the same registry."""
    import sqlite3

    from trust.tracking_store import sqlite_aliases, sqlite_file

    if uri is not None and (db := sqlite_file(uri)) is not None:
        try:
            return sqlite_aliases(db, model_name, version)
        except sqlite3.Error:
            pass  # not MLflow's layout, or no file yet: MLflow's own client says what is there
    from mlflow import MlflowClient

    return sorted(MlflowClient(uri).get_model_version(model_name, str(version)).aliases)


def unlearn_summary(root: Path, failed_stage: str | None = None, error: str | None = None,
                    aliases_of: Callable[[str, int | str], list[str]] = registry_aliases,
                    gate_failed: bool = False) -> dict:
    """The summary of the run whose outputs are under `root`. `failed_stage`: the stage that failed
    in this run (its outputs and every later stage's are not this run's); `error`: its message;
    `gate_failed`: it failed on a gate (exit 3), so a failed `register` did write its registration."""
    root = Path(root)
    # a failed pipeline stage makes its outputs and every later one's not this run's; a failed world
    # stage (before them all) every one's
    stale_from = (None if failed_stage is None else
                  paths.STAGES.index(failed_stage) if failed_stage in paths.STAGES else 0)

    def current(stage: str) -> bool:
        return stale_from is None or paths.STAGES.index(stage) < stale_from

    ev = _read(root / paths.EVALUATE_METRICS) if current("evaluate") else None
    reg = _read(root / paths.REGISTER_DIR / "registration.json") if current("register") else None
    # the register stage writes registration.json before it fails on a gate: a gate failure is its verdict
    if reg is None and failed_stage == "register" and gate_failed:
        reg = _read(root / paths.REGISTER_DIR / "registration.json")
    s: dict = {"failed_stage": failed_stage, "error": error, "evaluate": ev, "registration": reg,
               "report": str(root / paths.EVALUATE_DIR / "report.html")
               if ev is not None and (root / paths.EVALUATE_DIR / "report.html").is_file() else None}
    if reg is not None:
        try:
            s["aliases"], s["aliases_source"] = aliases_of(reg["model_name"], reg["version"]), "registry (now)"
        except Exception as e:  # noqa: BLE001 - said in the summary, never hidden
            s["aliases"], s["aliases_source"] = reg.get("aliases", []), f"at registration (registry unreadable: {e})"
    if reg is not None and (failed_stage is None or (failed_stage == "register" and gate_failed)):
        s["verdict"] = PASSED if reg.get("passed") else FAILED
    else:
        s["verdict"] = FAILED if failed_stage else INCOMPLETE
    return s


def _gate_rows(reg: dict) -> list[tuple[str, str, str, str]]:
    gates = reg.get("gates") or {}
    rows = []
    for name, g in gates.items():
        if not isinstance(g, dict):
            continue
        rows.append((name, f"{float(g['value']):.3f}", str(g["limit"]), "pass" if g.get("passed") else "**FAIL**"))
    return rows


def _attack_rows(ev: dict) -> list[tuple[str, str, str]]:
    counts = ev.get("attack_prompts") or {}
    return [(name, f"{float(v):.2f}", str(counts.get(name, "?")))
            for name, v in (ev.get("asr") or {}).items() if name != "prompt_set"]


def failed_gate_text(name: str, g: dict) -> str:
    """'max_target_rate 0.125 > 0.1', 'min_base_target_rate 0.020 < 0.25': how a gate failed (a
    `min_` gate fails below its limit, every other above it; registry.gate_results)."""
    return f"{name} {float(g['value']):.3f} {'<' if name.startswith('min') else '>'} {g['limit']}"


def headline(s: dict) -> str:
    """One line: the verdict and why."""
    reg = s.get("registration")
    if s["verdict"] == PASSED:
        return (f"PASSED: {reg['model_name']} v{reg['version']} registered; aliases "
                f"{', '.join(s.get('aliases') or []) or 'none'}")
    if reg is not None and s["verdict"] == FAILED and (s["failed_stage"] in (None, "register")):
        failed = [failed_gate_text(k, reg["gates"][k]) for k in reg.get("failed_gates", [])]
        return (f"FAILED: gate(s) {'; '.join(failed) or '?'}: {reg['model_name']} v{reg['version']} is candidate "
                "only, production unchanged")
    if s["failed_stage"]:
        return f"FAILED in stage {s['failed_stage']}: nothing registered by this run"
    return "INCOMPLETE: no registration yet"


def _targets(ev: dict) -> list[tuple[str, float, float]]:
    """(name, base, erased) per erased concept; one concept: one unnamed row."""
    if ev.get("targets"):
        return [(n, float(v["base"]), float(v["tuned"])) for n, v in ev["targets"].items()]
    return [("", float(ev["target_rate_base"]), float(ev["target_rate"]))]


def markdown(s: dict, title: str = "unlearn") -> str:
    """The Prefect artifact: verdict, gates, target rate, kept concepts, ASR per attack, version, report."""
    out = [f"# {title}: {headline(s)}", ""]
    if s.get("error") and s["verdict"] != PASSED:
        out += ["```", str(s["error"]).strip()[-1500:], "```", ""]
    reg, ev = s.get("registration"), s.get("evaluate")
    if reg is not None:
        out += ["## Gates", "", "| gate | value | limit | result |", "|---|---|---|---|"]
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _gate_rows(reg)]
        out += ["", f"Version: **{reg['model_name']} v{reg['version']}**, aliases "
                    f"{', '.join(s.get('aliases') or []) or 'none'} ({s.get('aliases_source')}).", ""]
    if ev is not None:
        out += ["## Measured (held-out prompts)", ""]
        out += [f"- target rate{f' ({n})' if n else ''}: base {b:.2f} -> erased **{t:.2f}**" for n, b, t in _targets(ev)]
        for name, k in (ev.get("keep") or {}).items():
            out.append(f"- kept {name}: base {k['base']:.2f} -> erased {k['tuned']:.2f} (drop {k['drop']:+.2f})")
        rows = _attack_rows(ev)
        if rows:
            out += ["", "| attack | ASR | prompts |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
        out.append("")
    if s.get("report"):
        out.append(f"Report: `{s['report']}`")
    return "\n".join(out).rstrip() + "\n"


def terminal_lines(s: dict) -> list[str]:
    """The end-of-run panel: short lines, no JSON."""
    lines = [headline(s)]
    ev, reg = s.get("evaluate"), s.get("registration")
    if ev is not None:
        lines += [f"target rate{f' ({n})' if n else ''}: base {b:.2f} -> erased {t:.2f}" for n, b, t in _targets(ev)]
        for name, k in (ev.get("keep") or {}).items():
            lines.append(f"kept {name}: base {k['base']:.2f} -> erased {k['tuned']:.2f} (drop {k['drop']:+.2f})")
        rows = _attack_rows(ev)
        if rows:
            lines.append("ASR: " + ", ".join(f"{a} {b} ({c} prompts)" for a, b, c in rows))
    if reg is not None:
        lines.append("gates: " + ", ".join(f"{a} {b} (limit {c}) {d.strip('*')}" for a, b, c, d in _gate_rows(reg)))
        lines.append(f"aliases of v{reg['version']}: {', '.join(s.get('aliases') or []) or 'none'} "
                     f"({s.get('aliases_source')})")
    if s.get("report"):
        lines.append(f"report: {s['report']}")
    return lines


def reerase_markdown(summary: dict) -> str:
    """The `reerase` flow's artifact: what was checked, its leak rate against the gate, each repair
    round, and what was registered (the flow's own summary dict, as written to reerase.json)."""
    status = summary.get("status", "?")
    ok = status.startswith("still erased") or summary.get("promoted")
    out = [f"# reerase: {'PASSED' if ok else 'FAILED'}: {status}", ""]
    if summary.get("message") and not ok:
        out += [summary["message"], ""]
    out.append(f"- checked: **{summary.get('checked')}** ({summary.get('ref')})")
    if summary.get("leak_rate") is not None:
        out.append(f"- leak rate {summary['leak_rate']:.3f} (gate {summary.get('gate')}); target rate "
                   f"{summary.get('target_rate', float('nan')):.3f}")
    for name, v in (summary.get("asr") or {}).items():
        out.append(f"  - ASR {name}: {float(v):.2f}")
    rounds = summary.get("rounds") or []
    if rounds:
        out += ["", "| round | added prompts | leak rate | target rate | worst kept drop | result |", "|---|---|---|---|---|---|"]
        for r in rounds:
            f = (lambda x: "-" if x is None else f"{float(x):.3f}")
            result = ("passed" if r.get("passed") else
                      "bar not reached" if r.get("leak_rate") is None else
                      "failed: " + ", ".join(failed_gate_text(k, v) for k, v in r.get("failed_gates", {}).items()))
            out.append(f"| {r['round']} | {r.get('added_prompts', '?')} | {f(r.get('leak_rate'))} | "
                       f"{f(r.get('target_rate'))} | {f(r.get('worst_drop'))} | {result} |")
    if summary.get("new_version"):
        out += ["", f"Registered v{summary['new_version']}: aliases {', '.join(summary.get('aliases') or []) or 'none'}"]
    out += ["", f"Workspace: `{summary.get('workspace')}`"]
    return "\n".join(out) + "\n"
