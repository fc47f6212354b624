"""Preservation of kept concepts: detection rate per kept concept, erased model vs base."""

from __future__ import annotations

import math


def rate(hits: list[bool]) -> float:
    return sum(map(bool, hits)) / len(hits) if hits else math.nan


def preservation(base_hits: dict[str, list[bool]], erased_hits: dict[str, list[bool]]) -> dict[str, dict]:
    """Per kept concept: {base, tuned, drop = base - tuned (Δpreservation, positive = lost), images}."""
    if base_hits.keys() != erased_hits.keys():
        raise ValueError("base and erased results name different kept concepts")
    out = {}
    for k in base_hits:
        b, t = rate(base_hits[k]), rate(erased_hits[k])
        out[k] = {"base": b, "tuned": t, "drop": b - t, "images": len(erased_hits[k])}
    return out


def mean_drop(keep: dict[str, dict]) -> float:
    drops = [v["drop"] for v in keep.values() if not math.isnan(v["drop"])]
    return sum(drops) / len(drops) if drops else math.nan
