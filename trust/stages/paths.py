"""Where each stage's outputs live (docs/stages.md); dvc.yaml names the same paths."""

from pathlib import Path

PROMPTS = Path("data/prompts.json")
LOCALIZE_DIR = Path("outputs/localize")
MASK = LOCALIZE_DIR / "mask.safetensors"
FINETUNE_DIR = Path("outputs/finetune")
DELTA = FINETUNE_DIR / "delta.safetensors"
FINETUNE_CHECKPOINTS = Path(".cache/finetune")
EVALUATE_DIR = Path("outputs/evaluate")
REGISTER_DIR = Path("outputs/register")
METRICS = Path("metrics")
EVALUATE_METRICS = METRICS / "evaluate.json"  # the headline numbers (what `dvc exp show` lists)
EVALUATE_DETAILS = EVALUATE_DIR / "details.json"  # the rest: per-attack details, every outcome, settings

STAGES = ("prompts", "localize", "finetune", "evaluate", "register")
WORLD_STAGES = ("world_classifier", "world")


def pipeline_stages(uses_world: bool) -> list[str]:
    """The stages `trust run` runs, in order: the world's first when the params build it."""
    return list(WORLD_STAGES if uses_world else ()) + list(STAGES)
