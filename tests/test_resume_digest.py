"""The fine-tuning checkpoint's digest covers every setting that shapes the run.

A checkpoint resumes only when its digest matches (trust/stages/finetune.py). Here each leaf
setting of `finetune` and `localize` (including the method's own knobs) is changed alone, and the
digest must change with it; so must the base model's fingerprint, the training prompts and the
localisation mask. tests/test_finetune_resume.py checks on a real checkpoint that the stage
refuses a mismatched digest.
"""

import warnings

import pytest
import torch
from pydantic import BaseModel

from trust.config import Params
from trust.stages.finetune import _digest

SETS = {"target": {"train": [{"prompt": "a red circle", "anchor": "a plain background"}]},
        "preserve": {"train": [{"prompt": "a blue square"}]}}
MASK = {"down.attn2.to_k.weight": torch.tensor([1.0, 0.0, 1.0])}


def _changed(value):
    """Another value of the same kind (what a user edit would give)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, (list, tuple)):
        return [*value, value[0] if value else "x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    if value is None:
        return 1
    raise TypeError(type(value))


def _leaves(model: BaseModel, prefix: str = ""):
    """(dotted path, field name chain) of each leaf setting of `model`."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from ((p, (name, *chain)) for p, chain in _leaves(value, f"{prefix}{name}."))
        else:
            yield f"{prefix}{name}", (name,)


def _with(model: BaseModel, chain: tuple[str, ...]) -> BaseModel:
    head, *rest = chain
    value = getattr(model, head)
    return model.model_copy(update={head: _with(value, tuple(rest)) if rest else _changed(value)})


def _settings(params: Params):
    for section in ("finetune", "localize"):
        for path, chain in _leaves(getattr(params, section)):
            yield f"{section}.{path}", (section, *chain)


def test_every_finetune_and_localize_setting_changes_the_digest():
    params = Params()
    want = _digest(params, "sha256:base", SETS, MASK)
    assert want == _digest(Params(), "sha256:base", SETS, MASK)  # the same inputs: the same digest
    settings = list(_settings(params))
    assert len(settings) > 30 and "finetune.method.loss" in dict(settings) and "localize.xi" in dict(settings)
    same = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a changed value's type may not be the field's (None -> 1)
        for path, chain in settings:
            if _digest(_with(params, chain), "sha256:base", SETS, MASK) == want:
                same.append(path)
    assert same == [], f"changing these settings would resume a checkpoint made without them: {same}"


@pytest.mark.parametrize("what", ["fingerprint", "target", "preserve", "mask-values", "mask-names"])
def test_the_base_the_prompts_and_the_mask_change_the_digest(what):
    params = Params()
    fingerprint, sets, mask = "sha256:base", SETS, MASK
    if what == "fingerprint":
        fingerprint = "sha256:other"
    elif what in ("target", "preserve"):
        sets = {**SETS, what: {"train": SETS[what]["train"] + [{"prompt": "one more"}]}}
    elif what == "mask-values":
        mask = {k: 1.0 - v for k, v in MASK.items()}
    else:
        mask = {"up.attn2.to_k.weight": v for v in MASK.values()}
    assert _digest(params, fingerprint, sets, mask) != _digest(params, "sha256:base", SETS, MASK)
