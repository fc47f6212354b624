"""Progress that reaches wherever the output goes: a tqdm bar on a terminal, and plain lines when
the output is a pipe (`trust run`: DVC runs the stage, Prefect streams its lines into the flow run's
logs, where a carriage-return bar would arrive as one line at the very end, or not at all)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, initial: int = 0, every_s: float = 30.0,
             every_frac: float = 0.1, stream=None) -> Iterator[T]:
    """Yield `items`; on a terminal through tqdm, else print `desc: i/total (p%), elapsed` at most
    every `every_s` seconds or `every_frac` of the total (and at the end)."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(items, initial=initial, total=total, desc=desc, file=stream)
        return
    t0 = last_t = time.monotonic()
    step = max(1, int(total * every_frac))
    done = initial
    print(f"{desc}: {done}/{total} started", file=stream, flush=True)
    try:
        for item in items:
            yield item
            done += 1
            now = time.monotonic()
            if done == total or now - last_t >= every_s or (done - initial) % step == 0:
                print(f"{desc}: {done}/{total} ({100 * done / max(total, 1):.0f}%), {now - t0:.0f} s", file=stream,
                      flush=True)
                last_t = now
    finally:  # the consumer stopped early (erase to a bar): say where
        if done < total:
            print(f"{desc}: stopped at {done + 1}/{total}, {time.monotonic() - t0:.0f} s", file=stream, flush=True)
