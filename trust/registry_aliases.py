"""Alias moves, recorded: who or what moved `candidate` / `production`, when, and from which version.

MLflow keeps only where an alias points now. Every move this project makes goes through
`move_alias`, which also tags both versions: the one that receives the alias gets
`trust.alias.<alias>.set` ("<UTC time> by <actor>, from v<previous>"), the one that loses it
`trust.alias.<alias>.moved` ("<UTC time> by <actor>, to v<new>"). The actor is the Prefect flow
run when one drives the move, else the user and host. `trust lineage` prints them.
"""

from __future__ import annotations

import getpass
import os
import socket
from datetime import datetime, timezone

from trust.tracking import PREFECT_ENV  # the flows set it for their stage processes

SET, MOVED = "trust.alias.{}.set", "trust.alias.{}.moved"


def actor() -> str:
    flow = os.environ.get(PREFECT_ENV)
    try:
        who = f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        who = f"uid {os.getuid()}@{socket.gethostname()}"
    return f"prefect flow run {flow} ({who})" if flow else who


def move_alias(client, name: str, alias: str, version: int | str, now: datetime | None = None) -> int | None:
    """Point `alias` of `name` at `version`, tagging both versions with the move; returns the version
    the alias left (None when it was unset or already there)."""
    from mlflow.exceptions import MlflowException

    try:
        previous = int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        previous = None
    when = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    who = actor()
    client.set_registered_model_alias(name, alias, str(version))
    if previous == int(version):
        return None
    client.set_model_version_tag(name, str(version), SET.format(alias),
                                 f"{when} by {who}, from " + (f"v{previous}" if previous is not None else "no version"))
    if previous is not None:
        client.set_model_version_tag(name, str(previous), MOVED.format(alias), f"{when} by {who}, to v{version}")
    return previous


def alias_history(tags: dict[str, str]) -> list[str]:
    """The version's recorded alias moves, as lines: 'production set 2026-... by ..., from v1'."""
    out = []
    for key, value in sorted(tags.items()):
        if key.startswith("trust.alias.") and key.count(".") == 3:
            _, _, alias, what = key.split(".")
            out.append(f"{alias} {what} {value}")
    return out
