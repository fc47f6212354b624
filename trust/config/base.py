"""What every params section shares: unknown keys are errors; a moved key names its new place."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _refuse_moved(data, old: str, new: str):
    """A before-validator body: an old key is refused with its new place named (the plain
    unknown-key error would only say to remove it)."""
    field = old.rsplit(".", 1)[1]
    if isinstance(data, dict) and field in data:
        raise ValueError(f"{old} moved to {new}: set {new}: {data[field]} and remove {old}")
    return data
