"""The params.yaml a re-erasure's workspace stage runs with, derived from the project's."""

from __future__ import annotations

from pathlib import Path

import yaml
from trust.config import Params, _absolute, load_params



def check_one_concept(params: Params) -> None:
    """Re-erasure adds the prompts that broke through to *the* concept's forget set: a version erasing
    several concepts (a concept list) is refused before any work, saying what to do instead."""
    if len(params.concepts) > 1:
        raise ValueError(f"concept: lists {len(params.concepts)} concepts ({params.concept_name}); `trust reerase` "
                         "re-erases one concept's leaks (the prompts that broke through join its forget set) and "
                         "does not re-erase a multi-concept version yet: rerun `trust run` with the leaking "
                         "prompts in the leaking concept's add_target, or re-erase each concept's own version")


def derive_params(params: Params, root: Path, path: Path, base: Path, add_targets: list[str] = (),
                  finetune: dict | None = None, repair: bool = False) -> Params:
    """Write (and validate) the params.yaml a workspace stage runs with; returns it loaded.

    Paths are made absolute against the project `root` (the stage runs in the workspace),
    `model.base` becomes `base` (the model the stage starts from) and `add_targets` are added
    to the concept's forget prompts as literal prompts (`concept.literal_targets`: not expanded,
    not checked against the world's words). `finetune`: changes to the finetune section
    (FinetuneParams.updated). `repair`: the params of a repair round, whose registration gates
    include the leak rate: register.gates.max_asr is at most max_target_rate (a round that still
    leaks under attack is never promoted, whatever params.yaml gates).
    """
    check_one_concept(params)
    p = params.model_copy(deep=True)
    _absolute(p, root)  # already absolute when loaded by load_params; a Params built in code may not be
    concept = p.concept.model_copy(update={"literal_targets": list(dict.fromkeys(
        [*p.concept.literal_targets, *add_targets]))})
    update = {"model": p.model.model_copy(update={"base": Path(base).resolve()}), "concept": concept}
    if finetune:
        update["finetune"] = p.finetune.updated(**finetune)
    if repair:
        g = p.registry.gates
        limit = g.max_target_rate if g.max_asr is None else min(g.max_asr, g.max_target_rate)
        update["registry"] = p.registry.model_copy(update={"gates": g.model_copy(update={"max_asr": limit})})
    p = p.model_copy(update=update)
    raw = p.model_dump(mode="json", by_alias=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# derived by the reerase flow from the project's params.yaml; do not edit\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)
