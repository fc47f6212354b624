"""A concept: its words (words.py), what its spec leaves out (neighbours.py), its prompt sets
(prompts.py) and the checks of its spec (spec.py). Torch-free."""

from trust.concepts.neighbours import neighbours, resolve  # noqa: F401
from trust.concepts.prompts import SPLITS, anchor_for, build_prompt_sets, build_run_sets, rows_of, shows  # noqa: F401
from trust.concepts.words import SLOT_VALUES, expand, labels_of, paraphrase, slots_of  # noqa: F401
