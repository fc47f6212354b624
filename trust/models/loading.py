"""Load and save `DiffusionParts`: SD pipeline folders and trust's built-in world.

Two folder kinds, told apart by their marker file:
- a diffusers `StableDiffusionPipeline` folder (`model_index.json`), e.g. SD v1.4/1.5;
- a world folder (`trust_model.json`): the same per-component diffusers folders, but an
  identity VAE that `StableDiffusionPipeline.from_pretrained` cannot build, hence one loader.
Everything is read with `local_files_only=True` and safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from trust.models.errors import ModelLoadError
from trust.models.identity_vae import IdentityVAE
from trust.models.parts import DiffusionParts
from trust.utils.model_kind import KIND_SD, KIND_WORLD, SD_INDEX, WORLD_INDEX, folder_kind
from trust.utils.safetensors_io import PICKLE_SUFFIXES, write_json

COMPONENTS = ("tokenizer", "text_encoder", "unet", "scheduler", "vae")
WEIGHTED = ("text_encoder", "unet", "vae")
EXPECTED = (
    f"a diffusers StableDiffusionPipeline folder (with {SD_INDEX} and tokenizer/, text_encoder/, unet/, "
    f"scheduler/, vae/ holding .safetensors weights) or a trust world folder (with {WORLD_INDEX})"
)


def detect_kind(path: Path) -> str:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist; expected {EXPECTED}")
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise ModelLoadError(
                f"{path} is a pickle-based checkpoint ({path.suffix}); trust never unpickles weights. "
                f"Expected {EXPECTED}. Convert it once, in an environment you trust, with diffusers' "
                "scripts/convert_original_stable_diffusion_to_diffusers.py --to_safetensors"
            )
        raise ModelLoadError(
            f"{path} is a single file; expected {EXPECTED}. For a single-file .safetensors checkpoint run "
            "StableDiffusionPipeline.from_single_file(path).save_pretrained(folder, safe_serialization=True)"
        )
    kind = folder_kind(path)
    if kind is not None:
        return kind
    raise ModelLoadError(f"{path} has neither {SD_INDEX} nor {WORLD_INDEX}: it is not a pipeline folder; expected {EXPECTED}")


def _check_components(path: Path, kind: str) -> None:
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise ModelLoadError(f"{path} lacks component folder(s) {', '.join(missing)}; expected {EXPECTED}")
    # The world's identity VAE has no weights.
    for c in WEIGHTED if kind == KIND_SD else ("text_encoder", "unet"):
        folder = path / c
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            hint = f" (found pickle weights {pickles}, which trust does not load)" if pickles else ""
            raise ModelLoadError(
                f"{folder} has no .safetensors weights{hint}; re-save the pipeline with "
                "save_pretrained(folder, safe_serialization=True) in a trusted environment"
            )


def load_model(path: str | Path, device: str = "cpu") -> DiffusionParts:
    """Load a model folder into `DiffusionParts` (frozen, eval mode)."""
    path = Path(path)
    kind = detect_kind(path)
    _check_components(path, kind)
    kw = dict(local_files_only=True)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=True, **kw)
        # low_cpu_mem_usage=False: the same load without the optional `accelerate` package.
        unet = UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True, low_cpu_mem_usage=False, **kw)
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", **kw)
        if kind == KIND_WORLD:
            vae = IdentityVAE.from_config(IdentityVAE.load_config(path / "vae", **kw))
            extra = json.loads((path / WORLD_INDEX).read_text())
        else:
            vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True, low_cpu_mem_usage=False, **kw)
            extra = {}
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"could not load {path} as {kind}: {e}") from e
    parts = DiffusionParts(tokenizer, text_encoder, unet, scheduler, vae, kind=kind, source=path, extra=extra)
    for m in parts.modules().values():
        m.to(device)
    return parts.requires_grad_(False).eval()


def save_model(parts: DiffusionParts, folder: str | Path) -> Path:
    """Save every component in its own diffusers/transformers format, weights as safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    parts.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    parts.unet.save_pretrained(folder / "unet", safe_serialization=True)
    parts.scheduler.save_pretrained(folder / "scheduler")
    parts.vae.save_pretrained(folder / "vae", safe_serialization=True)
    if parts.kind == KIND_WORLD:
        write_json({"kind": KIND_WORLD, "format": 1, **parts.extra}, folder / WORLD_INDEX)
    else:
        write_json(
            {
                "_class_name": "StableDiffusionPipeline",
                "feature_extractor": [None, None],
                "safety_checker": [None, None],
                "requires_safety_checker": False,
                "scheduler": ["diffusers", type(parts.scheduler).__name__],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            folder / SD_INDEX,
        )
    return folder
