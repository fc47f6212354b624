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
