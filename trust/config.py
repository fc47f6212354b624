"""The typed schema of `params.yaml`: the one place every parameter is defined and documented.

`load_params` validates the whole file before any stage does work; an unknown key, a wrong
type or an impossible value is one `ParamsError` naming the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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


class ConceptParams(_Strict):
    """What to erase. Templates may use {colour}, {shape}, {background} (world vocabulary);
    the `prompts` stage expands them, adding synonym paraphrases."""

    name: str = Field("circle", min_length=1, description="short name, used in model names and reports")
    kind: Literal["single", "combination", "conditional"] = "single"
    target: list[str] = Field(
        ["a {colour} circle", "a {colour} circle on a {background} background"], min_length=1,
        description="prompt templates that show the concept (the forget set)",
    )
    anchor: str = Field(
        "a {background} background",
        description="what a target prompt maps to; slots are filled from the target prompt's slots",
    )
    preserve: list[str] = Field(
        ["a {colour} square", "a {colour} triangle", "a {colour} cross"],
        description="prompt templates whose images must not change (kept concepts)",
    )
    detect: dict[str, str] = Field(
        {"shape": "circle"}, min_length=1,
        description="detector labels that mean 'the concept is present' (world classifier heads)",
    )
    keep: list[dict[str, str]] = Field(
        [{"shape": "square"}, {"shape": "triangle"}, {"shape": "cross"}],
        description="detector labels of kept concepts, with the preservation prompts that should show them",
    )


class PromptsParams(_Strict):
    seed: int = 0
    paraphrases: bool = Field(True, description="add synonym paraphrases of every target prompt (world)")
    max_per_role: int = Field(64, ge=1, description="cap on prompts per role (target, preserve), drawn by seed")
    eval_fraction: float = Field(0.25, gt=0, lt=1, description="share of prompts held out for evaluation")


class LocalizeParams(_Strict):
    seed: int = 0
    scorer: Literal["denoise", "classifier", "clip"] = Field(
        "denoise", description="concept score whose |gradient| is the saliency")
    xi: float = Field(2.0, ge=0, description="z-score threshold: a neuron is a concept neuron when z > xi")
    normalise: Literal["layer", "global"] = "layer"
    granularity: Literal["row", "element"] = "row"
    modules: list[Literal["to_q", "to_k", "to_v"]] = Field(["to_q", "to_k", "to_v"], min_length=1)
    batch_size: int = Field(8, ge=1, description="target prompts per saliency estimate")


class FinetuneParams(_Strict):
    method: Literal["trust"] = "trust"
    seed: int = 0
    steps: int = Field(60, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    loss: Literal["cip", "csr"] = "cip"
    beta: float = Field(1e-4, ge=0, description="weight of the CIP/CSR term")
    reestimate_every: int = Field(5, ge=1, description="k: re-estimate the mask every k steps")
    dynamic: bool = Field(True, description="false: keep the initial mask (static, SalUn-like)")
    references: int = Field(16, ge=1, description="target images generated once by the frozen model")
    preserve_weight: float = Field(
        0.0, ge=0, description="weight of the optional preservation term on the preservation prompts (0 = off, "
                               "as in the paper); it keeps their noise predictions at the frozen model's")
    checkpoint_every: int = Field(20, ge=1)


class EvaluateParams(_Strict):
    seed: int = 0
    samples_per_prompt: int = Field(4, ge=1)
    steps: int = Field(20, ge=1)
    guidance: float = Field(4.0, ge=1.0)
    max_prompts: int = Field(16, ge=1, description="held-out prompts per role to generate from")


class GateParams(_Strict):
    max_target_rate: float = Field(0.10, ge=0, le=1, description="erased concept's detection rate must be <= this")
    max_preservation_drop: float = Field(
        0.10, ge=0, le=1, description="each kept concept's rate may fall at most this far below the base model's")


class RegisterParams(_Strict):
    model_name: str = Field("trust-world-circle", pattern=r"^[A-Za-z0-9_.-]+$")
    gates: GateParams = GateParams()


class TrackingParams(_Strict):
    experiment: str = Field("trust", min_length=1)
    tracking_uri: str | None = Field(None, description="MLflow store; default sqlite:///mlflow.db in the project "
                                                       "(MLFLOW_TRACKING_URI overrides both)")


class Params(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: ModelParams = ModelParams()
    world: WorldParams = WorldParams()
    concept: ConceptParams = ConceptParams()
    prompts: PromptsParams = PromptsParams()
    localize: LocalizeParams = LocalizeParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    # `register` would shadow ABCMeta.register on the model class: stored as .registry.
    registry: RegisterParams = Field(RegisterParams(), alias="register")
    tracking: TrackingParams = TrackingParams()

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
