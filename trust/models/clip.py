"""The one CLIP loader: a local transformers CLIPModel and its processor, from `model.clip_dir`.

Two parts of the project read CLIP: TRUST's `localize.scorer: clip` (the CLIP score of sampled
images with their prompts, differentiable) and `evaluate.detector.kind: clip` (zero-shot
detection). Both load the same folder here, so one key says where CLIP lives and one message
says what the folder must hold. Loading is local only (no hub downloads) and safetensors only
(no pickled weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trust.models.errors import ModelLoadError

CLIP_KEY = "model.clip_dir"
CLIP_HELP = ("give a local folder holding a transformers CLIPModel and its processor saved with save_pretrained "
             "(config.json, model.safetensors, preprocessor_config.json or processor_config.json, tokenizer "
             "files), e.g. openai/clip-vit-large-patch14")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # one file, or a sharded checkpoint
_PROCESSOR = ("preprocessor_config.json", "processor_config.json")  # hub folders; transformers 5's save_pretrained


@dataclass(frozen=True)
class Clip:
    model: object  # transformers.CLIPModel, eval mode, no parameter gradients
    processor: object  # transformers.CLIPProcessor: image preprocessing + the tokenizer
    folder: Path

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def check_clip_dir(folder: Path | str | None, key: str = CLIP_KEY) -> Path:
    """The folder, if it looks like a saved CLIP (checked before anything heavy is imported)."""
    if folder is None:
        raise ModelLoadError(f"{key} is not set: localize.scorer clip and evaluate.detector.kind clip need local "
                             f"CLIP weights; {CLIP_HELP}")
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{key}: {str(folder)!r} has no CLIP model (no config.json); {CLIP_HELP}")
    if not any((folder / w).is_file() for w in _WEIGHTS):
        raise ModelLoadError(f"{key}: {str(folder)!r} has no model.safetensors (trust loads safetensors weights "
                             f"only, never pickled .bin files); {CLIP_HELP}")
    if not any((folder / f).is_file() for f in _PROCESSOR):
        raise ModelLoadError(f"{key}: {str(folder)!r} has no CLIP processor (no {' or '.join(_PROCESSOR)}; save "
                             f"the CLIPProcessor into the same folder); {CLIP_HELP}")
    return folder


def load_clip(folder: Path | str | None, device: str = "cpu", key: str = CLIP_KEY) -> Clip:
    """Load the CLIP in `folder` (already resolved against the project root) onto `device`."""
    folder = check_clip_dir(folder, key)
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{key}: {str(folder)!r} could not be loaded as a CLIPModel + CLIPProcessor ({e}); "
                             f"{CLIP_HELP}") from e
    # Gradients flow through CLIP to the images (the clip scorer), never into CLIP's own weights.
    return Clip(model.to(device).eval().requires_grad_(False), processor, folder)
