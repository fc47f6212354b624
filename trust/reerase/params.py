"""The params.yaml a re-erasure's workspace stage runs with, derived from the project's."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from trust.config import Params, load_params


def _absolute(model: BaseModel, root: Path) -> BaseModel:
    """Every relative Path field (model.base, world.*_dir, attack sets, ...) made absolute against `root`."""
    updates = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            updates[name] = _absolute(value, root)
        elif isinstance(value, Path) and not value.is_absolute():
            updates[name] = (root / value).resolve()
    return model.model_copy(update=updates)


def _template(prompt: str) -> str:
    """A literal prompt as a concept template: braces escaped, so it expands to itself."""
    return prompt.replace("{", "{{").replace("}", "}}")


def derive_params(params: Params, root: Path, path: Path, base: Path, add_targets: list[str] = ()) -> Params:
    """Write (and validate) the params.yaml a workspace stage runs with; returns it loaded.

    Paths are made absolute against the project `root` (the stage runs in the workspace),
    `model.base` becomes `base` (the model the stage starts from) and `add_targets` are added
    to the concept's target (forget) prompts as literal prompts.
    """
    p = _absolute(params, root)
    concept = p.concept.model_copy(update={"target": list(dict.fromkeys(
        [*p.concept.target, *(_template(t) for t in add_targets)]))})
    p = p.model_copy(update={"model": p.model.model_copy(update={"base": Path(base).resolve()}), "concept": concept})
    raw = p.model_dump(mode="json", by_alias=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# derived by the reerase flow from the project's params.yaml; do not edit\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)
