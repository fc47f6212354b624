"""Readable Prefect flow-run names: `<flow>-<concept>-<UTC time>` (re-erasure: `-<model ref>` too)
instead of Prefect's random adjective-animal pair, so an operator's `prefect flow-run ls` says
which run erased what and when."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import yaml


def run_name(kind: str, parameters: dict, now: datetime | None = None) -> str:
    """The name of a `kind` flow run with these flow parameters. The concept comes from the params
    file as written (the flow validates it right after; an unreadable file names the file instead)."""
    params_path = Path(parameters.get("root") or ".") / (parameters.get("params_path") or "params.yaml")
    try:
        concept = ((yaml.safe_load(params_path.read_text()) or {}).get("concept") or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        concept = None
    parts = [kind, concept or params_path.stem]
    if parameters.get("model_ref"):
        parts.append(parameters["model_ref"])
    stamp = f"{(now or datetime.now(timezone.utc)):%Y%m%dT%H%M%SZ}"
    return re.sub(r"[^A-Za-z0-9_.@/-]+", "_", "-".join(str(p) for p in parts)) + "-" + stamp


def namer(kind: str):
    """A `flow_run_name` callable for @flow: reads the run's parameters from Prefect's runtime."""
    def name() -> str:
        from prefect.runtime import flow_run

        return run_name(kind, dict(flow_run.parameters or {}))
    return name
