"""Where the MLflow store is, and a fast read of a version's aliases from a local sqlite store.

Kept apart from trust/tracking.py (which imports MLflow, ~3 s, and opens the store through
SQLAlchemy, ~2 s more) so that a no-op `trust run`, whose end panel shows the registry's current
aliases, stays within its 10 s (issue 15)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SQLITE = "sqlite:///"


def store_uri(tracking, root: Path) -> str:
    """The MLflow tracking URI: MLFLOW_TRACKING_URI, else `tracking.tracking_uri`, else the project's
    own sqlite store (root/mlflow.db)."""
    return (os.environ.get("MLFLOW_TRACKING_URI") or tracking.tracking_uri
            or f"{SQLITE}{Path(root).resolve() / 'mlflow.db'}")


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local sqlite store URI ("sqlite:///rel.db", "sqlite:////abs.db"), else None."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) and len(uri) > len(SQLITE) else None


def sqlite_aliases(db: Path, model_name: str, version: int | str) -> list[str]:
    """The aliases MLflow's registry holds for `model_name` version `version`, read from its sqlite
    file read-only (MLflow's own table `registered_model_aliases`; its `workspace` column, where the
    schema has one, is MLflow's 'default'). Raises sqlite3.Error when the file or table is not there."""
    if not Path(db).is_file():
        raise sqlite3.OperationalError(f"no such database file: {db}")
    con = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True)
    try:
        cols = {row[1] for row in con.execute("PRAGMA table_info(registered_model_aliases)")}
        if not {"alias", "name", "version"} <= cols:
            raise sqlite3.OperationalError(f"{db}: no registered_model_aliases table of MLflow's layout")
        sql = "SELECT alias FROM registered_model_aliases WHERE name = ? AND version = ?"
        args: tuple = (model_name, int(version))
        if "workspace" in cols:
            sql, args = sql + " AND workspace = ?", args + ("default",)
        return sorted(r[0] for r in con.execute(sql, args))
    finally:
        con.close()
