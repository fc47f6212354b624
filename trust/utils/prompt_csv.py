"""Read a prompt set in the I2P CSV layout: `prompt`, `evaluation_seed`, `evaluation_guidance`,
optional `categories`. Torch-free: `trust params check` parses the file before any work."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path

REQUIRED = ("prompt", "evaluation_seed", "evaluation_guidance")


class PromptSetError(ValueError):
    """The prompt set is missing or does not parse; the message says where and how to fix it."""


def read_prompt_set(path: Path | str, too_long: Callable[[str], str | None] | None = None
                    ) -> list[tuple[str, int, float, str]]:
    """[(prompt, seed, guidance, categories)], one per data row. `too_long(prompt)`: why a prompt is
    longer than the text encoder reads (it would be cut without a word), or None."""
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"prompt set {path} not found; give a CSV in the I2P layout ({', '.join(REQUIRED)})")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise PromptSetError(f"{path} line {line}: not UTF-8 (byte {data[e.start:e.start + 1]!r} at offset {e.start}); "
                             "save the file as UTF-8") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise PromptSetError(f"{path}: missing column(s) {missing}; the I2P layout needs {list(REQUIRED)}")
        rows = []
        start = 2
        for row in reader:
            n, start = start, reader.line_num + 1  # the row's first line (a quoted prompt may span lines)
            try:
                seed, guidance = int(float(row["evaluation_seed"])), float(row["evaluation_guidance"])
            except (TypeError, ValueError):
                raise PromptSetError(
                    f"{path} line {n}: evaluation_seed must be an integer and evaluation_guidance a number, "
                    f"got {row['evaluation_seed']!r}, {row['evaluation_guidance']!r}") from None
            if not math.isfinite(guidance):
                raise PromptSetError(f"{path} line {n}: evaluation_guidance must be a finite number, got {guidance}")
            prompt = (row["prompt"] or "").strip()
            if not prompt:
                raise PromptSetError(f"{path} line {n}: empty prompt")
            if too_long is not None and (why := too_long(prompt)):
                raise PromptSetError(f"{path} line {n}: prompt is {why}; the rest would be cut without a word: "
                                     "shorten it or split it into several prompts")
            rows.append((prompt, seed, guidance, (row.get("categories") or "").strip()))
    except csv.Error as e:
        raise PromptSetError(f"{path}: not a readable CSV ({e})") from None
    if not rows:
        raise PromptSetError(f"{path}: no prompts (only a header); add rows or point to another prompt set")
    return rows
