"""Peak memory of a piece of work: the CUDA allocator's peak on GPU, sampled RSS on CPU."""

from __future__ import annotations

import os
import threading

import torch


def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


class PeakMemory:
    """Peak memory above the level at start: CUDA allocator on GPU, sampled RSS on CPU.

    On CPU (glibc), large blocks are forced to mmap (returned to the OS when freed) and the
    heap is trimmed at the start, so memory freed by an earlier run does not hide a later
    run's allocations.
    """

    _mallopt_done = False

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if not self.cuda:
            import gc

            gc.collect()
            libc = _libc()
            if libc is not None:
                if not PeakMemory._mallopt_done:
                    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, no dynamic growth
                    PeakMemory._mallopt_done = True
                libc.malloc_trim(0)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.peak = self.rss()
        self.stop = threading.Event()

        def sample():
            while not self.stop.wait(0.005):
                self.peak = max(self.peak, self.rss())

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.stop.set()
            self.thread.join()
            self.bytes = max(self.peak, self.rss()) - self.start
        self.kind = "cuda max_memory_allocated" if self.cuda else "RSS (sampled 5 ms)"
