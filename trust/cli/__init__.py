"""`trust` command line: one sub-command per pipeline step, each reading params.yaml.

`app.py` holds the Typer app and the helpers every command shares; each other module adds
its commands to that app when imported, in the order `trust --help` lists them.
"""

from trust.cli.app import app
from trust.cli import stages, registry, schedule, bench, world, params, model  # noqa: F401,E402 (add commands)


def main() -> None:
    app()


__all__ = ["app", "main"]
