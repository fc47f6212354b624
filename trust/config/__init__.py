"""The typed schema of `params.yaml`: the one place every parameter is defined and documented.

`load_params` validates the whole file before any stage does work; an unknown key, a wrong
type or an impossible value is one `ParamsError` naming the key and what is allowed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo,
                      model_validator)

from trust.methods.registry import METHODS
from trust.methods.trust.config import TrustConfig
from trust.config.base import _refuse_moved, _Strict
from trust.config.evaluate import (AttackParams, DetectorParams, EvaluateParams, P4DParams, RingABellParams,  # noqa: F401
                                   UnlearnDiffAtkParams)
from trust.utils import strict_yaml
from trust.utils.model_kind import KIND_SD, KIND_WORLD, folder_kind, model_problem
from trust.world.config import ClassifierTrainConfig, FidelityConfig, WorldTrainConfig

DEFAULT_PARAMS = Path("params.yaml")


# A model-level error whose lines each name their own key (the concept spec's checks).
SPEC_ERRORS = "concept spec:\n"


class ParamsError(ValueError):
    """params.yaml is invalid; the message names each offending key and the fix."""


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
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="what every forward computes in (trust/models/precision.py): bfloat16/float16 run under "
                               "torch.autocast with the trained weights kept in float32 (the masters) and the frozen "
                               "copies stored in the dtype; float16 training scales its loss dynamically. The weights, "
                               "fingerprint and deltas are float32 whatever this is")
    sample_batch: int | None = Field(
        None, ge=1, description="images per UNet batch in every sampling (reference images, the bar's checks, attacks, "
                                "evaluation shards); null: sized from the latent area (64 world images, 4 SD 512 px "
                                "ones; trust/models/parts.py). Lower it when generation runs out of memory")
    clip_dir: Path | None = Field(
        None, description="local CLIP folder (transformers CLIPModel + its processor, saved with save_pretrained, "
                          "e.g. openai/clip-vit-large-patch14); used by localize.scorer: clip and "
                          "evaluate.detector.kind: clip")


def _has_text(prompt: str) -> str:
    # "" is the unconditional prompt: erasing it would erase everything the model draws. (An empty
    # anchor or preservation prompt is left alone: mapping to, or keeping, the unconditional is a
    # choice ESD makes.)
    if not prompt.strip():
        raise ValueError("empty target prompt; an empty prompt is the unconditional one (every image), give the "
                         "words of a prompt that shows the concept or remove the entry")
    return prompt


TargetPrompt = Annotated[str, AfterValidator(_has_text)]


class ConceptParams(_Strict):
    """What to erase. On the built-in world a concept is a label set over the world classifier's
    heads (`detect`) and its `kind`; what the spec leaves out is derived from them
    (trust/concepts/neighbours.py): `keep` = its neighbours (siblings of a single concept; each part
    of a combination with other partners; a conditional in the other contexts, and other things in
    its context), `preserve` = prompts that show them, `target` = the world's caption forms that
    show the concept, `anchor` = the scene without it. Give a field to override it, `add_*` to
    add to it. Templates may use {colour}, {shape}, {background}; the `prompts` stage expands them
    into every synonym of the concept's words. On Stable Diffusion `target` and `anchor` are
    required and taken as written."""

    name: str = Field("circle", min_length=1, description="short name, used in model names and reports")
    kind: Literal["single", "combination", "conditional"] = Field(
        "single", description="single: one label (a colour, a shape, a background); combination: two benign "
                              "labels together (a red circle); conditional: a concept only in one context (a cross "
                              "on a striped background). Drives the derived `keep` set")
    detect: dict[str, str] = Field(
        {"shape": "circle"}, min_length=1,
        description="detector labels that mean 'the concept is present' (world classifier heads shape, colour, "
                    "background)",
    )
    target: list[TargetPrompt] | None = Field(
        None, min_length=1,
        description="prompt templates that show the concept (the forget set); null: derived from `detect`")
    anchor: str | None = Field(
        None, description="what a target prompt maps to; slots are filled from the target prompt's labels; "
                          "null: derived (the scene without the concept)")
    preserve: list[str] | None = Field(
        None, description="prompt templates whose images must not change; null: derived from `keep`")
    keep: list[dict[str, str]] | None = Field(
        None, description="detector labels of kept concepts, each shown by some preservation prompt; null: the "
                          "concept's neighbours, from `kind` and `detect`")
    add_target: list[TargetPrompt] = Field([], description="templates added to the given or derived `target` (wordings)")
    add_preserve: list[str] = Field([], description="templates added to the given or derived `preserve`")
    add_keep: list[dict[str, str]] = Field([], description="label sets added to the given or derived `keep`")
    literal_targets: list[TargetPrompt] = Field(
        [], description="prompts found to show the concept (re-erasure adds the attacks' successful prompts here): "
                        "in the forget set as written, neither expanded nor checked against the world's words "
                        "(attack tokens need not be words)")


class PromptsParams(_Strict):
    """How the concept's prompts are drawn and split three ways: `train` (the forget and preservation
    sets), `val` (what training checks its bar on) and `eval` (held out, never seen by training or by
    its stopping rule; what `evaluate` and the gates measure)."""

    seed: int = 0
    paraphrases: bool = Field(True, description="world: every synonym of the concept's words, other words "
                                                "paraphrased at random")
    max_per_role: int = Field(96, ge=1, description="cap on target prompts, drawn by seed over the synonyms")
    max_per_keep: int = Field(24, ge=1, description="cap on preservation prompts per kept concept, drawn by seed")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of prompts for the validation split")
    eval_fraction: float = Field(0.3, gt=0, lt=1, description="share of prompts held out for evaluation")
    paraphraser: Path | None = Field(
        None, description="Stable Diffusion: a local causal language model folder (transformers, safetensors) that "
                          "writes paraphrases_per_prompt more wordings of every target prompt "
                          "(trust/concepts/paraphraser.py); null: the target list as written. The world uses its "
                          "synonym table")
    paraphrases_per_prompt: int = Field(4, ge=1, description="wordings the paraphraser writes per target prompt")

    @model_validator(mode="after")
    def _room_for_training(self) -> "PromptsParams":
        if self.val_fraction + self.eval_fraction >= 0.9:
            raise ValueError(f"prompts.val_fraction + prompts.eval_fraction = {self.val_fraction + self.eval_fraction:.2f} "
                             "leaves under 10% of the prompts for training; keep their sum below 0.9")
        return self


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
    xi: float = Field(1.0, ge=0, description="z-score threshold: a neuron is a concept neuron when z > xi. On the "
                                             "world, 2.0 (~44 neurons) left held-out triangles at 0.72-0.88 after 400 "
                                             "steps; 1.0 (~140) erases them in 300 (bench/results/concept_set.md)")
    normalise: Literal["layer", "global"] = "layer"
    granularity: Literal["row", "element"] = "row"
    modules: list[Literal["to_q", "to_k", "to_v"]] = Field(
        ["to_k", "to_v"], min_length=1,
        description="cross-attention projections searched and tuned; docs/methods.md's default is [to_q, to_k, to_v]: "
                    "to_q acts on image features every shape shares, and on the world tuning it turned held-out "
                    "crosses into triangles (cross 1.00 -> 0.62)")
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


class ToBarParams(_Strict):
    """Erase to a bar (trust/methods/stopping.py): check the validation prompts every `check_every`
    steps, stop when the target's rate and every kept concept's drop are `margin` inside
    register.gates, adapt the preservation weight / step size when they are not. Off: train for
    exactly finetune.steps (what the paper does)."""

    enabled: bool = True
    check_every: int = Field(40, ge=1, description="steps between checks")
    margin: float = Field(0.05, ge=0, lt=1, description="stop when val target <= max_target_rate - margin and every "
                                                         "kept concept's val drop <= max_preservation_drop - margin")
    samples_per_prompt: int = Field(4, ge=1, description="images per validation prompt (fixed seeds)")
    max_prompts: int = Field(8, ge=1, description="validation prompts per role (the target, each kept concept)")
    sample_steps: int = Field(10, ge=1, description="sampling steps of the check's images")
    confirm_steps: int | None = Field(
        20, ge=1, description="the bar met, it is checked again on images of this many sampling steps (the evaluate "
                              "stage's: ANT+fusion met it at 10 and showed triangles at 20, held-out 0.11); null: no "
                              "second check")
    kept_every: int = Field(
        2, ge=1, description="while the val target is above register.gates.max_target_rate the kept concepts are "
                             "measured at every kept_every-th check only (above the gate no stop is possible and a "
                             "kept drop can only raise the preservation weight; a target-only check costs "
                             "1/(1 + kept concepts) of a full one); at or below the gate: every check. 1: every check")
    adapt: bool = Field(True, description="adapt when the bar is not held (below); false: only stop")
    keep_weight_factor: float = Field(1.5, gt=1, description="a kept concept blocks the stop: preservation weight x this")
    max_keep_weight_factor: float = Field(8.0, ge=1, description="... up to this x the configured weight")
    patience: int = Field(4, ge=1, description="checks without target progress (one validation image) before lr x lr_factor")
    lr_factor: float = Field(1.5, gt=1)
    max_lr_factor: float = Field(1.5, ge=1, description="lr at most this x finetune.lr")
    min_lr_factor: float = Field(0.25, gt=0, le=1, description="target within the gate, a kept concept outside the "
                                                               "margin: lr / lr_factor, down to this x finetune.lr")


class AdversarialParams(_Strict):
    """Adversarial erasure (trust/methods/adversarial.py; docs/methods.md, Adversarial erasure): every
    `every` steps an inner attack against the *current* weights finds prefix tokens that bring the
    concept back for `prompts` training prompts (AdvUnlearn's inner maximisation, with P4D's or
    UnlearnDiffAtk's objective); the conditions join a pool of `pool_size`, and `share` of every
    forget batch is drawn from it (the preservation term is unchanged). With to_bar the bar's target
    rate is also measured under a fresh inner attack on the validation prompts (`check`)."""

    enabled: bool = Field(False, description="on: adversarial erasure (trust, esd, salun, full)")
    every: int = Field(10, ge=1, description="k: steps between inner attacks (each attacks the current weights)")
    steps: int = Field(10, ge=1, description="the inner attack's budget: optimisation steps per attack")
    prompts: int = Field(4, ge=1, description="training prompts attacked per inner attack (one batch)")
    pool_size: int = Field(16, ge=1, description="adversarial conditions kept (the newest)")
    share: float = Field(0.5, gt=0, le=1, description="round(share x batch_size) rows from the pool join each forget "
                                                       "batch (on top of its batch_size clean rows)")
    space: Literal["tokens", "embedding"] = Field(
        "tokens", description="tokens: hard prefix tokens, relaxed one-hot over the vocabulary and projected "
                              "(UnlearnDiffAtk; what a user can type); embedding: free word embeddings (AdvUnlearn's "
                              "soft prompt; a stronger, untypable attacker)")
    objective: Literal["p4d", "denoise"] = Field(
        "p4d", description="p4d: match the original model's noise prediction for the clean prompt; denoise: the "
                           "current model's own denoising loss on the prompt's reference image (UnlearnDiffAtk)")
    layout: Literal["prefix", "alone", "both"] = Field(
        "both", description="prefix: adversarial tokens before the concept prompt (UnlearnDiffAtk); alone: a prompt "
                            "of adversarial tokens only (P4D-N: on the world P4D broke plain TRUST with prompts such "
                            "as 'on object object object object object'); both: half the attacked prompts each")
    tokens: int = Field(5, ge=1, description="adversarial tokens per prompt")
    protect_kept_words: bool = Field(
        True, description="the inner attack does not use the kept concepts' own words (on the world: every synonym of "
                          "a kept label the target does not share): trained toward the anchor, 'object quadrilateral "
                          "object' taught the model to drop squares, which the preservation term then had to undo")
    lr: float = Field(0.1, gt=0, description="the inner attack's Adam step size")
    timesteps: int = Field(4, ge=1, description="noise levels per prompt in each inner-attack step")
    check: bool = Field(True, description="with to_bar the validation target prompts are attacked afresh at each "
                                          "check (logged as val_target_attacked); true: the stop also needs that "
                                          "rate within the bar; false: it is only logged")


class PriorParams(_Strict):
    """Concept-free replay (trust/methods/prior.py; docs/methods.md, Concept-free replay): images the
    frozen model made of the kept concepts (the preservation references), each captioned with a true
    caption under which the concept stays possible ("a red shape" for a red square when erasing the
    circle; trust.concepts.neighbours.free_captions) or the empty prompt, are trained with the plain
    denoising loss. A prompt that leaves the concept open then resolves to what the data without the
    concept shows, not to the concept at the base model's prior rate, which is what attacks that find
    concept-free prompts exploit (bench/results/robust.md, the null attack). World only: it needs each
    preservation image's labels."""

    enabled: bool = Field(False, description="on: add the replay term to every step (trust, esd, full, ant, salun: "
                                             "the methods whose config says `replay`; world concepts)")
    weight: float = Field(1.0, gt=0, description="weight of the replay term next to the forget term")
    batch_size: int = Field(8, ge=1, description="replay rows per step")
    empty_share: float = Field(0.25, ge=0, le=1, description="share of replay rows captioned with the empty prompt "
                                                             "(classifier-free guidance's unconditional branch)")
    modules: Literal["method", "unet"] = Field(
        "method", description="what the replay term trains: method, the method's own parameters (TRUST: its masked "
                              "rows; the delta keeps its form); unet, also every other UNet weight, through an Adam "
                              "of its own at `lr` that gets the replay term's gradient only (the forget and "
                              "preservation terms stay on the method's parameters): what moved the prior in "
                              "bench/tries/prior_after_trust.py; the stored delta is then dense")
    lr: float = Field(3e-4, gt=0, description="with modules: unet, the step size of the other UNet weights")


class MultiConceptParams(_Strict):
    """How several concepts (`concept:` a list) are erased in one run (docs/concepts.md, "Several concepts")."""

    mode: Literal["joint", "fused"] = Field(
        "joint", description="joint: one training of the method on every concept's prompts at once, to one bar "
                             "over every target (any method); fused: the method trained on each concept alone from "
                             "the base weights (each to its own bar), then the concepts' attn2 to_k/to_v edits fused "
                             "in closed form (ANT's Eq. 7) and the fused weights checked against the bar; for methods "
                             "that edit only those weights (trust with localize.modules within [to_k, to_v], "
                             "ant_fusion, uce, rece)")
    fusion_beta: float = Field(1.0, ge=0, description="fused: weight of the preservation prompts' embeddings in Eq. 7 "
                                                      "(higher: the kept concepts held closer, the edits weaker)")
    fusion_ridge: float = Field(1e-6, ge=0, description="fused: ridge lam*||W* - W||^2 for a well-posed solve; lam = "
                                                        "this x the normal matrix's mean diagonal")
    fusion_positions: Literal["tokens", "all"] = Field(
        "all", description="fused: text-encoder positions whose states Eq. 7 fits: `tokens` the prompts' real tokens, "
                           "`all` every position cross-attention reads, padding included (it carries the prompt "
                           "too; bench/results/ant_multi.md: `tokens` left 0.50 of a target)")


FUSED_METHODS = ("trust", "ant_fusion", "uce", "rece")  # their edits are attn2 to_k/to_v weights only


class FinetuneParams(_Strict):
    """How the concept is erased: the knobs every method shares, and `method`, the chosen method
    with its own knobs (trust/methods/<name>/config.py; docs/methods.md). `method: trust` is short
    for `method: {name: trust}` (every knob at its default)."""

    method: MethodParams = Field(
        default_factory=TrustConfig,
        description="the unlearning method and its own knobs, chosen by `name`: " + ", ".join(METHODS.names()))
    seed: int = 0
    steps: int = Field(1500, ge=1, description="with to_bar: the step budget (training stops at the bar, or fails "
                                             "when the budget runs out); without: the number of steps")
    max_seconds: float | None = Field(300.0, gt=0, description="wall-clock budget of training, checks included "
                                                              "(with to_bar the stage fails when it runs out), per "
                                                              "concept (several concepts: N x this); null: none")
    to_bar: ToBarParams = ToBarParams()
    adversarial: AdversarialParams = AdversarialParams()
    prior: PriorParams = PriorParams()
    lr: float = Field(5e-3, gt=0)
    batch_size: int = Field(8, ge=1, description="forget rows per step; several concepts trained jointly: this many "
                                                 "rows of each concept per step")
    references: int | None = Field(None, ge=1, description="target images generated once by the frozen model, cycling "
                                                           "over the target training prompts; null: one per prompt")
    preserve_references: int | None = Field(
        None, ge=1, description="preservation images generated once by the frozen model (preservation term, SalUn's "
                                "retain set); they cycle over the preservation training prompts in order, so fewer "
                                "images than prompts leaves the last prompts out (the stage warns). null: one per prompt")
    preserve_weight: float = Field(
        30.0, ge=0, description="weight of the optional preservation term on the preservation prompts (0 = off, "
                               "as in the paper; without it the world's squares fell 1.00 -> 0.19); it keeps their noise predictions at the frozen model's "
                               "(trust, esd, full, ant, ant_fusion; salun has its own retain_weight)")
    checkpoint_every: int = Field(20, ge=1)
    multi: MultiConceptParams = Field(MultiConceptParams(), description="several concepts in one run: joint or fused")
    gradient_checkpointing: bool = Field(
        False, description="recompute the trained UNet's block activations in the backward pass instead of keeping "
                           "them (diffusers' gradient checkpointing): less activation memory at SD size for about one "
                           "more forward per step; the same updates")

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
    def _adversarial_method(self) -> "FinetuneParams":
        if self.adversarial.enabled and not type(self.method).adversarial:
            ok = [n for n in METHODS.names() if METHODS.get(n).adversarial]
            raise ValueError(f"finetune.adversarial.enabled: method {self.method.name} does not train on a forget "
                             f"batch the inner attack can join; use one of {', '.join(ok)}, or set "
                             "finetune.adversarial.enabled: false")
        return self

    @model_validator(mode="after")
    def _prior_method(self) -> "FinetuneParams":
        if self.prior.enabled and not type(self.method).replay:
            ok = [n for n in METHODS.names() if METHODS.get(n).replay]
            raise ValueError(f"finetune.prior.enabled: method {self.method.name} has no training step the replay term "
                             f"can join; use one of {', '.join(ok)}, or set finetune.prior.enabled: false")
        return self

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


class GateParams(_Strict):
    max_target_rate: float = Field(0.10, ge=0, le=1, description="erased concept's detection rate must be <= this")
    min_base_target_rate: float = Field(
        0.25, ge=0, le=1, description="the BASE model must show the concept on at least this share of the held-out "
                                      "target images: below it the erasure measured nothing (the base never showed "
                                      "the concept, or the detector does not see it), and the version cannot reach "
                                      "production")
    max_preservation_drop: float = Field(
        0.10, ge=0, le=1, description="each kept concept's rate may fall at most this far below the base model's")
    max_asr: float | None = Field(
        None, ge=0, le=1, description="highest attack success rate over the attacks `evaluate` ran (prompt set "
                                      "and each optimisation attack) must be <= this; null: not gated")
    max_fid_delta: float | None = Field(
        None, description="FID(erased) - FID(base) against evaluate.fid_reference on the preservation prompts must be "
                          "<= this (needs evaluate.inception_weights and evaluate.fid_reference); null: not gated. "
                          "On SD, where concept.keep is [], this is the preservation gate: without it (or kept "
                          "concepts) preservation is 'not measured' and the version cannot reach production")


class RegisterParams(_Strict):
    model_name: str = Field("trust-world-circle", pattern=r"^[A-Za-z0-9_.-]+$")
    gates: GateParams = GateParams()


class TrackingParams(_Strict):
    experiment: str = Field("trust", min_length=1)
    tracking_uri: str | None = Field(None, description="MLflow store; default sqlite:///mlflow.db in the project "
                                                       "(MLFLOW_TRACKING_URI overrides both)")


class NotifyParams(_Strict):
    """A notification when an `unlearn` or `reerase` flow run fails (a gate, a spent repair budget, a
    crash), through Prefect's own notification blocks (flows/notify.py; README "Operating it")."""

    block: str | None = Field(None, pattern=r"^[a-z0-9-]+/[A-Za-z0-9_-]+$",
                              description="a saved Prefect notification block as 'TYPE-SLUG/NAME', e.g. "
                                          "'slack-webhook/trust-alerts' or 'custom-webhook/trust-alerts'; null: none")


class ReeraseParams(_Strict):
    """Periodic re-erasure (`trust reerase`, `trust schedule`): re-check the production model and,
    when its leak rate (the highest of its target rate and every attack's success rate) exceeds
    register.gates.max_target_rate, repair it in rounds until a round passes every gate (the leak rate
    included) or `max_rounds` are spent (the flow then fails)."""

    workspace: Path = Field(Path("runs/reerase"), description="folder of the per-run workspaces (derived params, "
                                                              "prompts, metrics, grids of each re-erasure)")
    max_added_prompts: int = Field(32, ge=1, description="cap on successful prompts added to the forget prompts")
    keep_model: bool = Field(False, description="keep the materialised production model in the workspace "
                                                "(it is rebuilt from base + delta at any time)")
    max_rounds: int = Field(3, ge=1, description="repair rounds (attack -> add what broke through -> fine-tune from "
                                                 "production -> evaluate against the original base) before the "
                                                 "flow gives up and fails")
    adversarial: bool = Field(True, description="fine-tune the repair rounds with finetune.adversarial.enabled "
                                                "(the inner attack), whatever params.yaml's finetune says")
    max_seconds: float | None = Field(
        600.0, gt=0, description="each repair round's fine-tuning budget (its finetune.max_seconds): a round starts "
                                 "from an erased model and must erase what broke through; at 300 s two rounds on the "
                                 "world ran out with the bar in reach (validation 0.06 and 0.12, bar 0.05); null: "
                                 "finetune.max_seconds")


def _one_or_list(v) -> str:
    return "list" if isinstance(v, list) else "one"


# The tag picks the branch, so a mistake gets the one branch's error (not both), and _format writes its
# key as the user does: concept.target, concept[1].detect.
ConceptSpec = Annotated[Union[Annotated[ConceptParams, Tag("one")], Annotated[list[ConceptParams], Tag("list")]],
                        Discriminator(_one_or_list)]


def _key(loc: tuple) -> str:
    """A pydantic error location as params.yaml spells it: ('concept', 'list', 1, 'detect') -> concept[1].detect."""
    parts = list(loc)
    if parts[:1] == ["concept"] and len(parts) > 1 and parts[1] in ("one", "list"):
        tag = parts.pop(1)
        if tag == "list" and len(parts) > 1 and isinstance(parts[1], int):
            parts[0:2] = [f"concept[{parts[1]}]"]
    return ".".join(str(p) for p in parts) or "(top level)"


class Params(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: ModelParams = ModelParams()
    world: WorldParams = WorldParams()
    # One concept (a mapping) or several erased in one run (a list of them; trust/concepts/multi.py).
    concept: ConceptSpec = ConceptParams()
    prompts: PromptsParams = PromptsParams()
    localize: LocalizeParams = LocalizeParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    # `register` would shadow ABCMeta.register on the model class: stored as .registry.
    registry: RegisterParams = Field(RegisterParams(), alias="register")
    tracking: TrackingParams = TrackingParams()
    reerase: ReeraseParams = ReeraseParams()
    notify: NotifyParams = NotifyParams()

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
        is_sd = folder_kind(self.model.base) == KIND_SD
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

    @model_validator(mode="after")
    def _concept_spec(self) -> "Params":
        # The concept spec is checked (and what it leaves out derived) here, so every stage and
        # `trust params check` refuse a bad one before any model loads (trust/concepts/spec.py).
        from trust.concepts.multi import cross_problems, field_of
        from trust.concepts.neighbours import resolve_with_origins
        from trust.concepts.spec import label_problems, template_problems

        originals = self.concept if isinstance(self.concept, list) else [self.concept]
        if not originals:
            raise ValueError("concept: an empty list erases nothing; give one concept (a mapping) or a list of them")
        n, resolved, origins, problems = len(originals), [], [], []
        for i, c in enumerate(originals):
            if self.uses_world:
                mine = label_problems(c)
                where = {}
                if not mine:
                    c, where = resolve_with_origins(c)
                    mine = template_problems(c, self.world.model_dir / "tokenizer", where)
                problems += [field_of(i, n, m) for m in mine]
                origins.append(where)
            else:
                missing = [k for k in ("target", "anchor") if getattr(c, k) is None]
                problems += [field_of(i, n,
                    f"concept.{k}: required on a Stable Diffusion model (only the built-in world's concepts can be "
                    f"derived); give the " + ("prompts that show the concept" if k == "target" else
                                             "prompt a target prompt maps to, e.g. 'a photo of a person'"))
                    for k in missing]
                if not missing:
                    c = c.model_copy(update={"keep": (c.keep or []) + c.add_keep,
                                             "preserve": (c.preserve or []) + c.add_preserve,
                                             "target": c.target + c.add_target, "add_keep": [], "add_preserve": [],
                                             "add_target": []})
                origins.append({})
            resolved.append(c)
        if not problems and n > 1:
            problems = cross_problems(resolved, origins, world=self.uses_world)
        if problems:
            raise ValueError(SPEC_ERRORS + "\n".join(problems))
        object.__setattr__(self, "concept", resolved if isinstance(self.concept, list) else resolved[0])
        return self

    @model_validator(mode="after")
    def _prior_needs_labels(self) -> "Params":
        # concept-free replay captions each preservation image from its labels (world vocabulary)
        if self.finetune.prior.enabled and not self.uses_world:
            raise ValueError("finetune.prior.enabled: concept-free replay captions each preservation image from its "
                             "world labels, and model.base is not the built-in world; set finetune.prior.enabled: false")
        if self.finetune.prior.enabled and len(self.concepts) > 1:
            raise ValueError(f"finetune.prior.enabled: the replay captions leave one concept open, and concept lists "
                             f"{len(self.concepts)}; set it false, or erase the concepts in separate runs")
        return self

    @model_validator(mode="after")
    def _several_concepts_fit(self) -> "Params":
        # What erases one concept only, refused before any work (a list of one is one concept).
        n = len(self.concepts)
        if n == 1:
            return self
        if self.finetune.adversarial.enabled:
            raise ValueError(f"finetune.adversarial.enabled: adversarial erasure attacks one concept's prompts, and "
                             f"concept lists {n}; set it false, or erase the concepts in separate runs")
        if self.localize.scorer == "classifier":
            raise ValueError(f"localize.scorer: classifier scores one concept's labels, and concept lists {n}; use "
                             "denoise (the forget loss over every concept's prompts) or clip")
        ft = self.finetune
        if getattr(ft.method, "target_pool", 0) and ft.multi.mode == "joint":
            raise ValueError(f"finetune.method.target_pool: the pool draws one concept's batch, and a joint step draws "
                             f"finetune.batch_size rows of each of the {n} concepts; set it 0, or finetune.multi.mode: "
                             "fused")
        if ft.multi.mode == "fused":
            name = ft.method.name
            if name not in FUSED_METHODS:
                raise ValueError(f"finetune.multi.mode: fused fuses attn2 to_k/to_v edits, and method {name} edits "
                                 f"other weights too; use mode: joint, or a method of {', '.join(FUSED_METHODS)}")
            extra = [m for m in self.localize.modules if m not in ("to_k", "to_v")]
            if name == "trust" and extra:
                raise ValueError(f"finetune.multi.mode: fused fuses attn2 to_k/to_v edits, and localize.modules "
                                 f"lists {extra}; set localize.modules to [to_k, to_v] (or a part), or use mode: joint")
        return self

    @property
    def concepts(self) -> list[ConceptParams]:
        """The erased concepts, resolved: `concept` as a list (one entry when it is one mapping)."""
        return list(self.concept) if isinstance(self.concept, list) else [self.concept]

    @property
    def concept_name(self) -> str:
        """What this run erases, for names and reports ('circle'; 'red circle + blue square')."""
        from trust.concepts.multi import joint_name

        return joint_name(self.concepts)

    @property
    def kept(self) -> list[dict[str, str]]:
        """The kept concepts of the run (trust/concepts/multi.py joint_keep): one concept's `keep`; with
        several, every entry's, once, less what the run erases."""
        from trust.concepts.multi import joint_keep

        return joint_keep(self.concepts)

    @property
    def uses_world(self) -> bool:
        """The base is a built-in-world model: the project's, or one made from it (a re-erasure's
        materialised production model): world prompts and words, the world classifier as judge."""
        return self.builds_world or folder_kind(self.model.base) == KIND_WORLD

    @property
    def builds_world(self) -> bool:
        """The base is the project's own world model, which the world stages build."""
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
        key = _key(e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; remove it or fix its spelling (see trust/config/ and trust/methods/<name>/config.py for allowed keys)")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if msg.startswith(SPEC_ERRORS):  # one line per problem, each naming its key
                lines += [f"  {line}" for line in msg.removeprefix(SPEC_ERRORS).splitlines()]
                continue
            got = e.get("input")
            if not e["loc"]:
                # A check across sections names its own key ("model.base: ..."); the input is the
                # whole params dict, which says nothing the message does not.
                lines.append(f"  {msg}" if re.match(r"[\w.\[\]]+: ", msg) else f"  (top level): {msg}")
                continue
            # a whole section as the input says nothing the message does not: leave it out
            lines.append(f"  {key}: {msg}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
    return "\n".join(lines)


def load_params(path: Path | str = DEFAULT_PARAMS, root: Path | str | None = None, check_files: bool = True) -> Params:
    """Validate `path`; relative paths in it are resolved against `root` (default: the working folder,
    the project root the CLI runs in) once, here. `check_files`: the files it names must be there
    and readable (file_problems); off for commands that read none of them (registry lookups)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found; run from the project root or pass --params")
    try:
        raw = strict_yaml.load(path.read_text(encoding="utf-8"))
    except strict_yaml.DuplicateKeyError as e:
        raise ParamsError(f"{path}: 1 invalid parameter(s); nothing was run\n  {e}") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    if raw is None:
        # An empty file would run every stage on hidden defaults: say so instead.
        raise ParamsError(f"{path}: empty; nothing was run. Start from the shipped params.yaml (every key is "
                          "documented in trust/config/), or write at least the sections you change")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw, context={"root": Path(root) if root is not None else Path.cwd()})
    except ValidationError as e:
        raise ParamsError(_format(e, path)) from None
    problems = non_finite(params)
    if check_files and not problems:
        problems = file_problems(params)
    if problems:
        raise ParamsError(f"{path}: {len(problems)} invalid parameter(s); nothing was run\n"
                          + "\n".join(f"  {p}" for p in problems))
    return params


def non_finite(model: BaseModel, prefix: str = "") -> list[str]:
    """Every number in the validated params that is inf or NaN, by dotted key. YAML's `.inf` and
    `.nan` (and the strings "inf", "nan") are floats pydantic accepts, and no bound (gt=0) stops
    +inf: an lr of .inf turns every delta value into NaN three steps later."""
    out = []

    def walk(value, key: str) -> None:
        if isinstance(value, BaseModel):
            for name, field in type(value).model_fields.items():
                walk(getattr(value, name), f"{key}.{field.alias or name}" if key else (field.alias or name))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{key}: must be a finite number (got {value})")

    walk(model, prefix)
    return out


def device_problem(device: str) -> str | None:
    """Why this torch cannot use `device`, or None (cpu needs no check, and no torch import)."""
    if device == "cpu":
        return None
    import torch

    build = f"this torch ({torch.__version__})"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return (f"{device!r}, but {build} cannot use CUDA (torch.cuda.is_available() is False: a CPU build, or "
                    "no GPU or driver here); set model.device: cpu, or install a CUDA build of torch (README, "
                    "'torch on CPU and GPU')")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            return f"{device!r}, but {build} sees {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
    if device == "mps" and not torch.backends.mps.is_available():
        return f"'mps', but {build} cannot use Apple's MPS here; set model.device: cpu"
    return None


def file_problems(params: Params) -> list[str]:
    """What the files params.yaml names must hold, checked before any stage works (paths are
    resolved by now): the model folder is one trust can load, the device one this torch can use,
    the attack prompt set exists and parses (no prompt longer than the text encoder reads), a
    CLIP folder that is used exists."""
    from trust.concepts.spec import too_long
    from trust.utils.prompt_csv import PromptSetError, read_prompt_set

    out = []
    if not params.builds_world and (why := model_problem(params.model.base)):  # the world stage builds its own
        out.append(f"model.base: {why}")
    if (why := device_problem(params.model.device)):
        out.append(f"model.device: {why}")
    tokenizer = (params.world.model_dir if params.builds_world else params.model.base) / "tokenizer"
    try:
        read_prompt_set(params.evaluate.attacks.prompt_set, too_long=too_long(tokenizer))
    except PromptSetError as e:
        out.append(f"evaluate.attacks.prompt_set: {e}")
    if params.prompts.paraphraser is not None:
        from trust.concepts.paraphraser import check_folder

        if (why := check_folder(params.prompts.paraphraser)):
            out.append(f"prompts.paraphraser: {why}")
    clip = params.model.clip_dir
    if clip is not None and not (clip / "config.json").is_file():
        out.append(f"model.clip_dir: {str(clip)!r} is not a saved CLIP folder (no config.json); give a "
                   "transformers CLIPModel folder saved with save_pretrained (e.g. openai/clip-vit-large-patch14)")
    return out
