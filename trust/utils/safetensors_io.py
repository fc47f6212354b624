"""Weights on disk are safetensors only: never unpickle a file someone handed us."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trust.utils.model_kind import PICKLE_SUFFIXES  # noqa: E402,F401 (one list of pickle suffixes)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Atomic write: a crash leaves the previous file, never half of a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path} is a pickle-based checkpoint; trust reads weights from .safetensors files only")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return load_file(str(path))


def write_json(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
