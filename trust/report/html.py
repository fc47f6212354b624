"""A self-contained HTML report: every image is embedded as a base64 PNG, no external files.

Sections: metrics table, ASR bar chart, base-vs-erased grid, strongest adversarial
examples per attack (with their prompts), preservation grid.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from trust.report.run_summary import failed_gate_text
from trust.utils.images import labelled_grid


def data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def asr_bar_chart(pre_asr: float, asr: dict[str, float], title: str = "attack success rate",
                  gate: float | None = None, gate_label: str = "gate", prompts: dict[str, int] | None = None) -> Image.Image:
    """Bars per attack (and the no-attack pre-ASR); with `gate`, a line at the limit and each bar green
    (held: at or under it) or red (broken: over it); `prompts`: how many prompts each attack ran on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts = prompts or {}
    keys = ["prompt_set"] + list(asr)
    names = ["no attack (pre-ASR)"] + list(asr)
    names = [n + (f"\n({prompts[k]} prompts)" if k in prompts else "") for k, n in zip(keys, names)]
    values = [pre_asr] + [asr[k] for k in asr]
    values = [0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]
    if gate is None:
        colours = ["#888888"] + ["#c0392b"] * len(asr)
    else:
        colours = ["#27ae60" if v <= gate else "#c0392b" for v in values]
    fig, ax = plt.subplots(figsize=(1.4 + 1.3 * len(names), 3.4), dpi=100)
    bars = ax.bar(range(len(names)), values, color=colours)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.02, f"{v:.2f}", ha="center", fontsize=9)
    if gate is not None:
        ax.axhline(gate, color="#333333", linestyle="--", linewidth=1)
        ax.text(len(names) - 0.5, gate + 0.02, f"{gate_label} {gate:.2f}", ha="right", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("ASR")
    ax.set_title(title + (" (green: held, red: over the gate)" if gate is not None else ""), fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def attack_prompts(metrics: dict) -> dict[str, int]:
    """How many prompts each attack of metrics/evaluate.json ran on."""
    if "attack_prompts" in metrics:
        return {k: int(v) for k, v in metrics["attack_prompts"].items()}
    return {k: int(v["prompts"]) for k, v in (metrics.get("asr_details") or {}).items() if "prompts" in v}


def metrics_asr_chart(metrics: dict, asr_gate: tuple[str, float | None] | None = None) -> Image.Image:
    """The ASR chart of metrics/evaluate.json, with `asr_gate` (label, limit) drawn when given."""
    label, limit = asr_gate if asr_gate is not None else ("gate", None)
    return asr_bar_chart(metrics.get("pre_asr", float("nan")), metrics["asr"], gate=limit, gate_label=label,
                         prompts=attack_prompts(metrics))


def verdict_banner(gates: dict) -> str:
    """PASS / FAIL against the registration gates (registry.gate_results), each failed one with its
    value and limit: the first thing the report says."""
    failed = [(k, g) for k, g in gates.items() if isinstance(g, dict) and not g.get("passed")]
    if not failed:
        text = "PASS: every registration gate holds (" + ", ".join(
            f"{k} {float(g['value']):.3f} vs {g['limit']}" for k, g in gates.items() if isinstance(g, dict)) + ")"
        colour = "#1e8449"
    else:
        text = "FAIL: " + "; ".join(failed_gate_text(k, g) for k, g in failed)
        colour = "#c0392b"
    return (f'<div class="verdict" style="background:{colour};color:white;padding:0.8em 1em;font-size:1.2em;'
            f'font-weight:bold">{html.escape(text)}</div>')


@dataclass
class Example:
    """One adversarial example: the original prompt's erased-model images and the attack's."""

    prompt: str
    adversarial: str | None
    broken: bool
    score: float
    before: torch.Tensor | None  # erased model, original prompt
    after: torch.Tensor | None  # erased model, adversarial prompt
    detected_no_attack: bool = False


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def metrics_rows(metrics: dict) -> list[tuple[str, str]]:
    rows = [("target rate, base", _fmt(metrics.get("target_rate_base"))), ("target rate, erased", _fmt(metrics.get("target_rate")))]
    rows.append(("pre-ASR (no attack)", _fmt(metrics.get("pre_asr"))))
    for k, v in (metrics.get("asr") or {}).items():
        rows.append((f"ASR {k}", _fmt(v)))
    for k, v in (metrics.get("keep") or {}).items():
        rows.append((f"kept {k}", f"base {_fmt(v['base'])}, erased {_fmt(v['tuned'])}, drop {_fmt(v['drop'])}"))
    for k, v in (metrics.get("fidelity") or {}).items():
        if not isinstance(v, dict):
            continue
        if v.get("computed") is False:  # a metric that needs something the user did not give: say what
            rows.append((v.get("name", k), f"not computed: {v.get('reason', '')}"))
            continue
        shown = []
        if "base" in v:
            shown.append(f"base {_fmt(v['base'])}, erased {_fmt(v['erased'])}, Δ {_fmt(v['delta'])}")
        if "erased_vs_base" in v:
            shown.append(f"erased vs base {_fmt(v['erased_vs_base'])}")
        if shown:
            rows.append((v.get("name", k), "; ".join(shown)))
    return rows


def render_report(title: str, metrics: dict, before_after: Image.Image | None = None,
                  preservation: Image.Image | None = None, examples: dict[str, list[Example]] | None = None,
                  settings: dict | None = None, gates: dict | None = None,
                  header: list[tuple[str, str]] | None = None, asr_gate: tuple[str, float] | None = None,
                  asr_chart: Image.Image | None = None,
                  preservation_heading: str = "Kept concepts: base vs erased") -> str:
    """`gates`: registry.gate_results of these metrics (the verdict banner); `header`: what was
    evaluated (model, method, commit...); `asr_gate`: (label, limit) drawn on the ASR chart;
    `asr_chart`: that chart already drawn (metrics_asr_chart), else it is drawn here;
    `preservation_heading`: what the preservation grid shows (on SD: the preservation prompts, there
    are no kept-concept labels)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if gates is not None:
        parts.append(verdict_banner(gates))
    if header:
        parts.append(_table(header))
    parts += ["<h2>Metrics</h2>", _table(metrics_rows(metrics))]
    if metrics.get("asr") is not None:
        chart = asr_chart if asr_chart is not None else metrics_asr_chart(metrics, asr_gate)
        counts = ", ".join(f"{k}: {n} prompts" for k, n in attack_prompts(metrics).items())
        parts += ["<h2>Attack success rate</h2>", f'<img alt="ASR bar chart" src="{data_uri(chart)}">',
                  f"<p>{html.escape(counts)}</p>" if counts else ""]
    if before_after is not None:
        parts += ["<h2>Base vs erased (same seeds)</h2>", f'<img alt="base vs erased" src="{data_uri(before_after)}">']
    for attack, exs in (examples or {}).items():
        parts.append(f"<h2>Strongest adversarial examples: {html.escape(attack)}</h2>")
        if not exs:
            parts.append("<p>no prompt attacked</p>")
            continue
        rows = []
        for e in exs:
            status = "detected with no attack" if e.detected_no_attack else ("BROKEN by attack" if e.broken else "held")
            imgs = [x for x in (e.before, e.after) if x is not None]
            grid = labelled_grid([(lab, x) for lab, x in (("erased, original prompt", e.before),
                                                          ("erased, adversarial prompt", e.after)) if x is not None],
                                 cell=64) if imgs else None
            img = f'<img alt="example" src="{data_uri(grid)}">' if grid is not None else ""
            rows.append(f"<tr><td>{html.escape(e.prompt)}</td><td><code>{html.escape(e.adversarial or '-')}</code></td>"
                        f"<td>{status}</td><td>{e.score:.3f}</td><td>{img}</td></tr>")
        parts.append("<table><tr><th>prompt</th><th>adversarial prompt</th><th>result</th><th>detector score</th>"
                     "<th>images</th></tr>" + "".join(rows) + "</table>")
    if preservation is not None:
        parts += [f"<h2>{html.escape(preservation_heading)}</h2>",
                  f'<img alt="preservation" src="{data_uri(preservation)}">']
    if settings:
        import json

        parts += ["<h2>Settings</h2>", f"<pre>{html.escape(json.dumps(settings, indent=2, default=str))}</pre>"]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top} img{image-rendering:pixelated}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(path: Path, *args, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(*args, **kwargs), encoding="utf-8")
    return path
