"""Filesystem helpers that never leave half-written outputs behind."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(final: Path):
    """Yield a scratch folder that replaces `final` only if the block succeeds.

    On failure the scratch folder is removed and `final` (the previous output) is untouched.
    """
    final = Path(final)
    tmp = final.parent / f".{final.name}.partial"
    old = final.parent / f".{final.name}.old"
    if old.is_dir() and not final.exists():
        # killed between the two renames below: the previous output is `old`; put it back
        old.rename(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """`path` holds `text` whole, or its previous content if this is interrupted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
