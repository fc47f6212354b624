"""Stage output paths are declared once (trust/stages/paths.py); dvc.yaml must name the same ones."""

from pathlib import Path

import yaml

from trust.stages import paths

ROOT = Path(__file__).resolve().parents[1]


def _outs(stage: dict) -> set[str]:
    return {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])}


def test_dvc_outs_are_the_declared_stage_paths():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {
        "prompts": {paths.PROMPTS},
        "localize": {paths.LOCALIZE_DIR},
        "finetune": {paths.FINETUNE_DIR},
        "evaluate": {paths.EVALUATE_DIR},
        "register": {paths.REGISTER_DIR},
    }
    assert set(paths.STAGES) == set(declared) and set(paths.STAGES) <= set(stages)
    for name, want in declared.items():
        assert _outs(stages[name]) == {p.as_posix() for p in want}, name
        # each stage's metrics file lives in the declared metrics folder
        metrics = {next(iter(m)) if isinstance(m, dict) else m for m in stages[name].get("metrics", [])}
        assert all(Path(m).parent == paths.METRICS for m in metrics), name
    # a stage that reads another's output depends on the declared path (or a file inside it)
    assert paths.MASK.as_posix() in stages["finetune"]["deps"] and paths.DELTA.as_posix() in stages["evaluate"]["deps"]
