"""How every benchmark writes its result: NAME.json (all numbers), NAME.md (the table), NAME.png (the plot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def write_results(result: dict, out: Path, name: str, markdown: Callable[[dict], str],
                  plot: Callable[[dict, Path], None]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    plot(result, out / f"{name}.png")
