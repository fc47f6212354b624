"""The typed schema of `params.yaml`: the one place every parameter is defined and documented.

`load_params` validates the whole file before any stage does work; an unknown key, a wrong
type or an impossible value is one `ParamsError` naming the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from trust.methods.registry import METHODS
from trust.methods.trust.config import TrustConfig
from trust.world.config import ClassifierTrainConfig, FidelityConfig, WorldTrainConfig

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is invalid; the message names each offending key and the fix."""


def _refuse_moved(data, old: str, new: str):
    """A before-validator body: an old key is refused with its new place named (the plain
    unknown-key error would only say to remove it)."""
    field = old.rsplit(".", 1)[1]
    if isinstance(data, dict) and field in data:
        raise ValueError(f"{old} moved to {new}: set {new}: {data[field]} and remove {old}")
    return data


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
    clip_dir: Path | None = Field(
        None, description="local CLIP folder (transformers CLIPModel + its processor, saved with save_pretrained, "
                          "e.g. openai/clip-vit-large-patch14); used by localize.scorer: clip and "
                          "evaluate.detector.kind: clip")


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
    """Where the concept neurons are (TRUST): |gradient| of a concept score over the
    cross-attention projections, z-normalised; also used for TRUST's mask re-estimation."""

    seed: int = 0
    scorer: Literal["denoise", "classifier", "clip"] = Field(
        "denoise", description="concept score whose |gradient| is the saliency: `denoise` = the forget loss L_prev "
                               "on noised reference images (no sampling); `classifier` = the world classifier's "
                               "probability of concept.detect on images sampled (short differentiable DDIM) from the "
                               "current weights for target prompts; `clip` = CLIP score of such images (decoded by "
                               "the VAE) with their target prompts, as in the paper (needs model.clip_dir)")
    xi: float = Field(2.0, ge=0, description="z-score threshold: a neuron is a concept neuron when z > xi")
    normalise: Literal["layer", "global"] = "layer"
    granularity: Literal["row", "element"] = "row"
    modules: list[Literal["to_q", "to_k", "to_v"]] = Field(["to_q", "to_k", "to_v"], min_length=1)
    batch_size: int = Field(8, ge=1, description="target prompts per saliency estimate (`denoise` scorer)")
    sample_steps: int = Field(4, ge=1, description="DDIM steps of the differentiable sample (`classifier`, `clip`)")
    sample_batch: int = Field(2, ge=1, description="images per saliency estimate (`classifier`, `clip`)")
    sample_guidance: float = Field(4.0, ge=1.0, description="classifier-free guidance of that sample")

    @model_validator(mode="before")
    @classmethod
    def _clip_path_moved(cls, data):
        return _refuse_moved(data, "localize.clip_path", "model.clip_dir")


def _method_union():
    configs = tuple(METHODS.get(n) for n in METHODS)
    return Annotated[Union[configs], Field(discriminator="name")]  # noqa: UP007 (built from the registry)


MethodParams = _method_union()


def _moved_keys() -> dict[str, dict[str, str]]:
    """Old flat finetune key -> {method name: its field now}, from each method config's `moved_from`."""
    out: dict[str, dict[str, str]] = {}
    for name in METHODS:
        for old, new in METHODS.get(name).moved_from.items():
            out.setdefault(old, {})[name] = new
    return out


class FinetuneParams(_Strict):
    """How the concept is erased: the knobs every method shares, and `method`, the chosen method
    with its own knobs (trust/methods/<name>/config.py; docs/methods.md). `method: trust` is short
    for `method: {name: trust}` (every knob at its default)."""

    method: MethodParams = Field(
        default_factory=TrustConfig,
        description="the unlearning method and its own knobs, chosen by `name`: " + ", ".join(METHODS.names()))
    seed: int = 0
    steps: int = Field(60, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    references: int = Field(16, ge=1, description="target images generated once by the frozen model")
    preserve_references: int | None = Field(
        None, ge=1, description="preservation images generated once by the frozen model (preservation term, SalUn's "
                                "retain set); they cycle over the preservation training prompts in order, so fewer "
                                "images than prompts leaves the last prompts out (the stage warns). null: `references` "
                                "(what the shipped circle results were measured with)")
    preserve_weight: float = Field(
        0.0, ge=0, description="weight of the optional preservation term on the preservation prompts (0 = off, "
                               "as in the paper); it keeps their noise predictions at the frozen model's "
                               "(trust, esd, full, ant, ant_fusion; salun has its own retain_weight)")
    checkpoint_every: int = Field(20, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand_and_moved(cls, data):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("method"), str):
            data["method"] = {"name": data["method"]}
        moved = _moved_keys()
        old = [k for k in data if k not in cls.model_fields and k in moved]
        if old:
            chosen = data.get("method", {}).get("name", "trust") if isinstance(data.get("method"), dict) else "trust"
            lines = []
            for k in old:
                owners = moved[k]
                if chosen in owners:
                    lines.append(f"finetune.{k} moved to finetune.method.{owners[chosen]} (method {chosen})")
                else:
                    lines.append(f"finetune.{k} moved into the method's section: "
                                 + ", ".join(f"finetune.method.{v} (method {m})" for m, v in owners.items())
                                 + f"; method {chosen} has no such knob")
            raise ValueError("; ".join(lines) + ". Write e.g. finetune: {method: {name: " + chosen + ", ...}}")
        return data

    @model_validator(mode="after")
    def _pipeline_fusion(self) -> "FinetuneParams":
        if self.method.name == "ant_fusion" and self.method.fusion_overlap == "sum":
            # checked here, not at fusion time, so a pipeline run fails before any training
            raise ValueError("finetune.method.fusion_overlap=sum applies to multi-concept fusion "
                             "(bench/ant_multi.py); the pipeline's ant_fusion erases one concept: use `own`")
        return self

    def updated(self, **changes) -> "FinetuneParams":
        """A validated copy with `changes`; `method` may be a name, a config, or a dict of the method's
        own knobs (merged into the current method's when the name is unchanged or absent); any other
        key that finetune does not have is a knob of the (resulting) method."""
        raw = self.model_dump(mode="json")
        method = changes.pop("method", None)
        if isinstance(method, str):
            method = {"name": method}
        elif isinstance(method, BaseModel):
            method = method.model_dump(mode="json")
        if method is not None:
            same = method.get("name", raw["method"]["name"]) == raw["method"]["name"]
            raw["method"] = {**raw["method"], **method} if same else dict(method)
        # a key finetune does not have is one of the method's own knobs
        for k in [k for k in changes if k not in type(self).model_fields]:
            raw["method"][k] = changes.pop(k)
        return type(self).model_validate({**raw, **changes})


class UnlearnDiffAtkParams(_Strict):
    """UnlearnDiffAtk: prefix tokens as relaxed one-hot vectors over the vocabulary (docs/methods.md)."""

    prefix_tokens: int = Field(3, ge=1, description="k adversarial prefix tokens (paper: 5 nudity, 3 styles/objects)")
    steps: int = Field(30, ge=1, description="optimisation steps per prompt (the budget)")
    lr: float = Field(0.01, gt=0, description="Adam learning rate on the relaxed one-hot vectors")
    timesteps: int = Field(8, ge=1, description="size of the timestep sweep over the training schedule")
    batch_timesteps: int = Field(4, ge=1, description="sweep timesteps used per optimisation step")
    check_every: int = Field(10, ge=1, description="project to hard tokens, generate and detect every n steps")
    reference_tries: int = Field(4, ge=1, description="seeds tried for a reference image the original model draws")


class P4DParams(_Strict):
    """P4D: match the unlearned model's noise prediction to the original model's for the target prompt."""

    tokens: int = Field(6, ge=1, description="learnable tokens (P4D-N: the whole prompt; P4D-K: inserted ones)")
    insert_every: int = Field(0, ge=0, description="0: P4D-N; k > 0: P4D-K, a learnable token after every k prompt tokens")
    steps: int = Field(30, ge=1, description="optimisation steps per prompt (the budget)")
    lr: float = Field(0.1, gt=0, description="AdamW learning rate on the continuous (projected) embeddings")
    weight_decay: float = Field(0.1, ge=0)
    batch_timesteps: int = Field(4, ge=1, description="trajectory steps of the original model used per step")
    check_every: int = Field(10, ge=1)


class RingABellParams(_Strict):
    """Ring-A-Bell: concept vector from prompt pairs, genetic search over tokens; text encoder only."""

    k: float = Field(3.0, description="target = embedding(prompt) + k * concept vector")
    population: int = Field(48, ge=4, description="paper: 200")
    generations: int = Field(30, ge=1, description="the budget")
    mutation: float = Field(0.25, ge=0, le=1)
    crossover: float = Field(0.5, ge=0, le=1)
    length: int = Field(8, ge=1, description="tokens per candidate prompt (paper: 16)")
    pairs: list[tuple[str, str]] = Field(
        [], description="(with concept, without concept) prompt pairs; empty: target prompts and their anchors "
                        "from data/prompts.json")


class AttackParams(_Strict):
    """Adversarial evaluation: a prompt set (I2P CSV layout) and optimisation attacks on its prompts."""

    prompt_set: Path = Field(Path("data/attacks/world_circle.csv"),
                             description="CSV in the I2P layout: prompt, evaluation_seed, evaluation_guidance[, categories]")
    run: list[Literal["unlearndiffatk", "p4d", "ringabell"]] = Field(
        ["unlearndiffatk", "p4d", "ringabell"], description="optimisation attacks to run (the prompt set always runs)")
    max_prompts: int = Field(4, ge=1, description="prompts of the set each optimisation attack attacks")
    seed: int = 0
    unlearndiffatk: UnlearnDiffAtkParams = UnlearnDiffAtkParams()
    p4d: P4DParams = P4DParams()
    ringabell: RingABellParams = RingABellParams()


class DetectorParams(_Strict):
    """Which detector decides 'the concept is present'; its settings are recorded with every result."""

    kind: Literal["world", "nudenet", "clip"] = Field("world", description="world classifier (concept.detect), "
                                                                            "NudeNet or CLIP zero-shot")
    nudenet_threshold: float = Field(0.6, ge=0, le=1, description="0.45 (UnlearnDiffAtk) or 0.6 (MACE/ANT)")
    nudenet_classes: list[str] = Field(
        ["FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "MALE_BREAST_EXPOSED",
         "BUTTOCKS_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "ARMPITS_EXPOSED", "BELLY_EXPOSED"], min_length=1)
    clip_labels: list[str] = Field([], description="concept label first, then alternatives (kind: clip; CLIP "
                                                   "itself is model.clip_dir)")
    clip_threshold: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _clip_dir_moved(cls, data):
        return _refuse_moved(data, "evaluate.detector.clip_dir", "model.clip_dir")


class EvaluateParams(_Strict):
    seed: int = 0
    samples_per_prompt: int = Field(4, ge=1)
    steps: int = Field(20, ge=1)
    guidance: float = Field(4.0, ge=1.0)
    max_prompts: int = Field(16, ge=1, description="held-out prompts per role to generate from")
    detector: DetectorParams = DetectorParams()
    attacks: AttackParams = AttackParams()
    inception_weights: Path | None = Field(
        None, description="local TorchScript Inception-v3 feature extractor (inception-2015-12-05.pt, as StyleGAN2-ADA "
                          "and clean-fid use) for standard FID on the preservation prompts; without it the metrics "
                          "say FID was not computed (the world still reports its classifier's Frechet distance)")
    fid_reference: Path | None = Field(
        None, description="folder of reference images (PNG/JPEG/WebP, e.g. COCO val2014) for FID of the base and the "
                          "erased model and their difference (needs inception_weights); null: FID between erased and "
                          "base images of the same prompts and seeds (the world: against rendered scenes)")
    report: bool = Field(True, description="write outputs/evaluate/report.html")
    distributed: bool = Field(
        False, description="generate the evaluation images in shards over Dask workers (a Prefect flow with "
                           "prefect-dask's DaskTaskRunner; each worker loads model.base and the delta from their "
                           "folders and checks the model fingerprint); false: in this process")
    dask_address: str | None = Field(
        None, description="scheduler of an existing Dask cluster (e.g. tcp://host:8786) whose workers read "
                          "model.base and the delta at the same absolute paths; null: a LocalCluster of `workers` "
                          "single-threaded worker processes (distributed: true only)")
    workers: int = Field(2, ge=1, description="LocalCluster worker processes (distributed: true, no dask_address)")
    shard_size: int = Field(
        64, ge=1, description="(prompt, seed) pairs per shard, sampled as one batch; the serial path samples in "
                              "batches of the same size, so both paths give identical images")


class GateParams(_Strict):
    max_target_rate: float = Field(0.10, ge=0, le=1, description="erased concept's detection rate must be <= this")
    max_preservation_drop: float = Field(
        0.10, ge=0, le=1, description="each kept concept's rate may fall at most this far below the base model's")
    max_asr: float | None = Field(
        None, ge=0, le=1, description="highest attack success rate over the attacks `evaluate` ran (prompt set "
                                      "and each optimisation attack) must be <= this; null: not gated")
    max_fid_delta: float | None = Field(
        None, description="FID(erased) - FID(base) against evaluate.fid_reference on the preservation prompts must be "
                          "<= this (needs evaluate.inception_weights and evaluate.fid_reference); null: not gated. "
                          "On SD, where concept.keep is [], this is the preservation gate")


class RegisterParams(_Strict):
    model_name: str = Field("trust-world-circle", pattern=r"^[A-Za-z0-9_.-]+$")
    gates: GateParams = GateParams()


class TrackingParams(_Strict):
    experiment: str = Field("trust", min_length=1)
    tracking_uri: str | None = Field(None, description="MLflow store; default sqlite:///mlflow.db in the project "
                                                       "(MLFLOW_TRACKING_URI overrides both)")


class ReeraseParams(_Strict):
    """Periodic re-erasure (`trust reerase`, `trust schedule`): re-check the production model and,
    when its target rate exceeds register.gates.max_target_rate, fine-tune it again."""

    workspace: Path = Field(Path("runs/reerase"), description="folder of the per-run workspaces (derived params, "
                                                              "prompts, metrics, grids of each re-erasure)")
    max_added_prompts: int = Field(32, ge=1, description="cap on successful prompts added to the forget prompts")
    keep_model: bool = Field(False, description="keep the materialised production model in the workspace "
                                                "(it is rebuilt from base + delta at any time)")


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
    reerase: ReeraseParams = ReeraseParams()

    @model_validator(mode="after")
    def _resolve_paths(self, info: ValidationInfo) -> "Params":
        # Paths are resolved once, here: every relative path in params.yaml is relative to the project
        # root (`load_params(root=...)`, default the working folder); stages read them as they are.
        root = (info.context or {}).get("root")
        if root is not None:
            _absolute(self, Path(root))
        return self

    @model_validator(mode="after")
    def _base_model_exists(self) -> "Params":
        # The world stage creates world.model_dir, so only other folders must exist up front.
        if self.model.base != self.world.model_dir and not self.model.base.exists():
            raise ValueError(
                f"model.base: folder {str(self.model.base)!r} does not exist; give a local diffusers "
                f"StableDiffusionPipeline folder or the world model folder ({self.world.model_dir})"
            )
        return self

    @model_validator(mode="after")
    def _detector_fits_model(self) -> "Params":
        # Checked here, before any stage runs: the evaluate stage would refuse it only after fine-tuning.
        is_sd = (self.model.base / "model_index.json").is_file() and not (self.model.base / "trust_model.json").is_file()
        if is_sd and self.evaluate.detector.kind == "world":
            raise ValueError(
                f"evaluate.detector.kind: 'world' needs the built-in world's classifier, but model.base "
                f"{str(self.model.base)!r} is a Stable Diffusion folder; use kind: nudenet (nudity) or kind: clip "
                "(with model.clip_dir)")
        return self

    @model_validator(mode="after")
    def _clip_dir_given(self) -> "Params":
        # Both CLIP users read model.clip_dir: refused here, before a stage loads any model (the
        # detector would fail only in `evaluate`, after fine-tuning).
        users = [k for k, on in (("localize.scorer: clip", self.localize.scorer == "clip"),
                                 ("evaluate.detector.kind: clip", self.evaluate.detector.kind == "clip")) if on]
        if users and self.model.clip_dir is None:
            raise ValueError(f"model.clip_dir: not set, but {' and '.join(users)} "
                             f"{'needs' if len(users) == 1 else 'need'} a local CLIP folder "
                             "(a transformers CLIPModel + its processor, saved with save_pretrained)")
        return self

    @property
    def uses_world(self) -> bool:
        return self.model.base == self.world.model_dir


def _absolute(model: BaseModel, root: Path) -> None:
    """Every relative Path field of `model` and its sections made absolute against `root`, in place."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _absolute(value, root)
        elif isinstance(value, Path) and not value.is_absolute():
            object.__setattr__(model, name, (root / value).resolve())


def _format(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: {err.error_count()} invalid parameter(s); nothing was run"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; remove it or fix its spelling (see trust/config.py for allowed keys)")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            # a whole section as the input says nothing the message does not: leave it out
            lines.append(f"  {key}: {msg}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
    return "\n".join(lines)


def load_params(path: Path | str = DEFAULT_PARAMS, root: Path | str | None = None) -> Params:
    """Validate `path`; relative paths in it are resolved against `root` (default: the working folder,
    the project root the CLI runs in) once, here."""
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
        return Params.model_validate(raw, context={"root": Path(root) if root is not None else Path.cwd()})
    except ValidationError as e:
        raise ParamsError(_format(e, path)) from None
