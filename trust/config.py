"""The typed schema of `params.yaml`: the one place every parameter is defined and documented.

`load_params` validates the whole file before any stage does work; an unknown key, a wrong
type or an impossible value is one `ParamsError` naming the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trust.world.classifier import ClassifierTrainConfig
from trust.world.fidelity import FidelityConfig
from trust.world.train import WorldTrainConfig

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is invalid; the message names each offending key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorldParams(_Strict):
    """The built-in world: where its parts live and how they are trained and checked."""

    model_dir: Path = Field(Path("models/world"), description="world text-to-image model folder (a DVC output)")
    classifier_dir: Path = Field(Path("models/world_classifier"), description="world concept classifier folder")
    checkpoint_dir: Path = Field(Path(".cache/world-train"), description="resumable training checkpoints")
    train: WorldTrainConfig = WorldTrainConfig()
    classifier: ClassifierTrainConfig = ClassifierTrainConfig()
    eval: FidelityConfig = FidelityConfig()


class ModelParams(_Strict):
    """The base model every erasure starts from."""

    base: Path = Field(
        Path("models/world"),
        description="a diffusers StableDiffusionPipeline folder (SD v1.4/1.5, safetensors) or a world folder",
    )
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="torch device")


class Params(_Strict):
    model: ModelParams = ModelParams()
    world: WorldParams = WorldParams()

    @model_validator(mode="after")
    def _base_model_exists(self) -> "Params":
        # The world stage creates world.model_dir, so only other folders must exist up front.
        if self.model.base != self.world.model_dir and not self.model.base.exists():
            raise ValueError(
                f"model.base: folder {str(self.model.base)!r} does not exist; give a local diffusers "
                f"StableDiffusionPipeline folder or the world model folder ({self.world.model_dir})"
            )
        return self

    @property
    def uses_world(self) -> bool:
        return self.model.base == self.world.model_dir


def _format(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: {err.error_count()} invalid parameter(s); nothing was run"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; remove it or fix its spelling (see trust/config.py for allowed keys)")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_format(e, path)) from None
