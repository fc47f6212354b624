"""Read a prompt set in the I2P CSV layout: `prompt`, `evaluation_seed`, `evaluation_guidance`,
optional `categories`. Torch-free: `trust params check` parses the file before any work."""

from __future__ import annotations

import csv
from pathlib import Path

REQUIRED = ("prompt", "evaluation_seed", "evaluation_guidance")


class PromptSetError(ValueError):
    """The prompt set is missing or does not parse; the message says where and how to fix it."""


def read_prompt_set(path: Path | str) -> list[tuple[str, int, float, str]]:
    """[(prompt, seed, guidance, categories)], one per data row."""
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"prompt set {path} not found; give a CSV in the I2P layout ({', '.join(REQUIRED)})")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise PromptSetError(f"{path}: missing column(s) {missing}; the I2P layout needs {list(REQUIRED)}")
            rows = []
            for n, row in enumerate(reader, start=2):
                try:
                    seed, guidance = int(float(row["evaluation_seed"])), float(row["evaluation_guidance"])
                except (TypeError, ValueError):
                    raise PromptSetError(
                        f"{path} line {n}: evaluation_seed must be an integer and evaluation_guidance a number, "
                        f"got {row['evaluation_seed']!r}, {row['evaluation_guidance']!r}") from None
                if not (row["prompt"] or "").strip():
                    raise PromptSetError(f"{path} line {n}: empty prompt")
                rows.append((row["prompt"].strip(), seed, guidance, (row.get("categories") or "").strip()))
    except (UnicodeDecodeError, csv.Error) as e:
        raise PromptSetError(f"{path}: not a readable UTF-8 CSV ({e})") from None
    if not rows:
        raise PromptSetError(f"{path}: no prompts (only a header); add rows or point to another prompt set")
    return rows
