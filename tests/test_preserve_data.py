"""Preservation images cover the preservation prompts: `finetune.preserve_references` sets how
many, and the stage says which prompts a smaller number leaves out."""

import torch

from trust.config import FinetuneParams
from trust.models import load_model
from trust.stages import finetune

ROWS = [{"prompt": p, "anchor": ""} for p in
        ("a red square", "a blue circle", "a red triangle", "a red cross", "a green circle")]


def test_preserve_references_cover_every_prompt(root, capsys):
    torch.set_num_threads(1)
    parts = load_model(root / "models/world")
    # the default (null): one image per preservation training prompt, every prompt used
    default = finetune.preserve_data(parts, ROWS, FinetuneParams(references=3))
    assert len(default) == 5 and set(default.prompts) == {r["prompt"] for r in ROWS}
    assert "not used" not in capsys.readouterr().err
    few = finetune.preserve_data(parts, ROWS, FinetuneParams(preserve_references=3))
    assert len(few) == 3 and "a red cross" not in few.prompts
    assert "2 of 5 preservation training prompts are not used" in capsys.readouterr().err
    enough = finetune.preserve_data(parts, ROWS, FinetuneParams(references=3, preserve_references=7))
    assert len(enough) == 7 and set(enough.prompts) == {r["prompt"] for r in ROWS}
    assert "not used" not in capsys.readouterr().err


def test_benchmarks_share_the_rule(root):
    """The benchmarks pass their own reference count; preserve_references still wins, and a
    count that leaves prompts out warns through the caller's channel."""
    from trust.methods.data import preserve_data

    torch.set_num_threads(1)
    parts = load_model(root / "models/world")
    said = []
    bench = preserve_data(parts, ROWS, FinetuneParams(references=16), references=2, warn=said.append)
    assert len(bench) == 2 and said and "3 of 5" in said[0]
    said.clear()
    covered = preserve_data(parts, ROWS, FinetuneParams(preserve_references=5), references=2, warn=said.append)
    assert len(covered) == 5 and not said
