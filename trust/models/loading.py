"""Load and save `DiffusionParts`: SD pipeline folders and trust's built-in world.

Two folder kinds, told apart by their marker file:
- a diffusers `StableDiffusionPipeline` folder (`model_index.json`), e.g. SD v1.4/1.5;
- a world folder (`trust_model.json`): the same per-component diffusers folders, but an
  identity VAE that `StableDiffusionPipeline.from_pretrained` cannot build, hence one loader.
Everything is read with `local_files_only=True` and safetensors only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from trust.models.errors import ModelLoadError
from trust.models.identity_vae import IdentityVAE
from trust.models.parts import DiffusionParts
from trust.utils.model_kind import (COMPONENTS, KIND_SD, KIND_WORLD, SD_INDEX,  # noqa: F401 (re-exported)
                                    WORLD_INDEX, components_problem, kind_problem, variant)
from trust.utils.safetensors_io import write_json



def detect_kind(path: Path) -> str:
    kind, why = kind_problem(path)
    if why:
        raise ModelLoadError(why)
    return kind


def _check_components(path: Path, kind: str) -> None:
    if why := components_problem(path, kind):
        raise ModelLoadError(why)


def load_model(path: str | Path, device: str = "cpu", sample_batch: int | None = None,
               dtype: str = "float32") -> DiffusionParts:
    """Load a model folder into `DiffusionParts` (frozen, eval mode). `sample_batch`: images per
    sampling batch (model.sample_batch); None: sized from the latent area (DiffusionParts.sample_batch).
    `dtype` (model.dtype): what its forwards compute in; the weights are float32 (trust/models/precision.py)."""
    from trust.models.precision import dtype_of

    compute = dtype_of(dtype)
    path = Path(path)
    kind = detect_kind(path)
    _check_components(path, kind)
    kw = dict(local_files_only=True)
    # Weights are computed in float32 whatever the files hold: an fp16 folder (SD's published
    # half-precision weights, under the plain names or as the `fp16` variant) is upcast on load.
    weights = dict(use_safetensors=True, torch_dtype=torch.float32, **kw)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", variant=variant(path / "text_encoder"),
                                                     **weights)
        # low_cpu_mem_usage=False: the same load without the optional `accelerate` package.
        unet = UNet2DConditionModel.from_pretrained(path / "unet", variant=variant(path / "unet"),
                                                    low_cpu_mem_usage=False, **weights)
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", **kw)
        if kind == KIND_WORLD:
            vae = IdentityVAE.from_config(IdentityVAE.load_config(path / "vae", **kw))
            extra = json.loads((path / WORLD_INDEX).read_text())
        else:
            vae = AutoencoderKL.from_pretrained(path / "vae", variant=variant(path / "vae"), low_cpu_mem_usage=False,
                                                **weights)
            extra = {}
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"could not load {path} as {kind}: {e}") from e
    parts = DiffusionParts(tokenizer, text_encoder, unet, scheduler, vae, kind=kind, source=path, extra=extra,
                           batch_images=sample_batch, compute_dtype=compute)
    for m in parts.modules().values():
        m.to(device)
    return parts.requires_grad_(False).eval()


class UnetFileState(Mapping):
    """The UNet's weights as its folder stores them, read one tensor at a time (float32, as load_model
    computes in): what a weights delta is taken against, without a second copy of the UNet in memory
    (3.4 GB at SD size). Plain or `fp16`-variant files, one or several shards."""

    def __init__(self, folder: Path, device: torch.device | str = "cpu"):
        from safetensors import safe_open

        self.device = torch.device(device)
        comp = Path(folder) / "unet"
        v = variant(comp)
        files = sorted(f for f in comp.glob("*.safetensors") if (f.name.count(".") == 2) == (v is not None))
        self._where: dict[str, Path] = {}
        self.shapes: dict[str, tuple] = {}  # each tensor's shape, from the file headers (nothing read)
        for f in files:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    self._where[k], self.shapes[k] = f, tuple(h.get_slice(k).get_shape())

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._where[key]), framework="pt") as h:
            t = h.get_tensor(key)
        return (t.float() if t.is_floating_point() else t).to(self.device)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def matches(self, state: dict[str, torch.Tensor]) -> bool:
        """Same tensor names and shapes as a loaded UNet's state dict (not so when diffusers converted
        an older layout's names on load)."""
        return self._where.keys() == state.keys() and all(self.shapes[k] == tuple(v.shape) for k, v in state.items())


def base_unet_state(parts: DiffusionParts, log=print) -> Mapping:
    """What the fine-tuned UNet is compared with when its delta is written: the folder's own tensors
    (read lazily), or, when they do not match the loaded UNet's names, an in-memory copy (said so)."""
    state = parts.unet.state_dict()
    if parts.source is not None:
        files = UnetFileState(parts.source, parts.unet.device)
        if files.matches(state):
            return files
        log(f"base weights: the tensors in {parts.source / 'unet'} do not match the loaded UNet's names or shapes "
            "(converted on load); the delta is taken against an in-memory copy of the UNet")
    return {k: v.clone() for k, v in state.items()}


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
