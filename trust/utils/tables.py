"""Rich tables shared by CLI commands."""

from __future__ import annotations

from rich.table import Table


def parts_table(parts, title: str) -> Table:
    """One row per weighted part of a `DiffusionParts`: class and parameter count."""
    t = Table(title=title)
    t.add_column("part")
    t.add_column("class")
    t.add_column("parameters", justify="right")
    for name, m in parts.modules().items():
        t.add_row(name, type(m).__name__, f"{sum(p.numel() for p in m.parameters()):,}")
    return t
