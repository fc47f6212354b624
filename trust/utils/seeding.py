"""Seeds: every stage takes one, and derived streams are keyed so order never matters."""

from __future__ import annotations

import numpy as np
import torch


def numpy_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def torch_generator(*keys: int) -> torch.Generator:
    # One 63-bit seed from the keys, via numpy's SeedSequence (stable across versions).
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)
