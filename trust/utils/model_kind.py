"""What kind of model a folder holds, told apart by its marker file, and whether it is one trust
can load (torch-free, so the params check asks before any model loads): the one answer to
"world or Stable Diffusion?" and to "what is wrong with this folder?"."""

from __future__ import annotations

from pathlib import Path

KIND_SD = "stable-diffusion"
KIND_WORLD = "world"
SD_INDEX = "model_index.json"  # a diffusers StableDiffusionPipeline folder
WORLD_INDEX = "trust_model.json"  # a trust world folder (its own loader: an identity VAE)


def folder_kind(path: Path) -> str | None:
    """KIND_WORLD, KIND_SD, or None when `path` is no pipeline folder (yet)."""
    path = Path(path)
    if (path / WORLD_INDEX).is_file():
        return KIND_WORLD
    if (path / SD_INDEX).is_file():
        return KIND_SD
    return None


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
COMPONENTS = ("tokenizer", "text_encoder", "unet", "scheduler", "vae")
WEIGHTED = ("text_encoder", "unet", "vae")
EXPECTED = (
    f"a diffusers StableDiffusionPipeline folder (with {SD_INDEX} and tokenizer/, text_encoder/, unet/, "
    f"scheduler/, vae/ holding .safetensors weights) or a trust world folder (with {WORLD_INDEX})"
)
CONVERT = ("Convert it once, in an environment you trust, with diffusers' "
           "scripts/convert_original_stable_diffusion_to_diffusers.py --checkpoint_path FILE --dump_path FOLDER "
           "--to_safetensors, and give FOLDER")


def kind_problem(path: Path) -> tuple[str | None, str | None]:
    """(kind, None) for a pipeline folder, else (None, what is wrong and the fix)."""
    path = Path(path)
    if not path.exists():
        return None, f"model path {str(path)!r} does not exist; expected {EXPECTED}"
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            return None, (f"{path} is a pickle-based checkpoint ({path.suffix}); trust never unpickles weights. "
                          f"Expected {EXPECTED}. {CONVERT}")
        return None, (f"{path} is a single file; expected {EXPECTED}. For a single-file .safetensors checkpoint run "
                      "StableDiffusionPipeline.from_single_file(path).save_pretrained(folder, safe_serialization=True)")
    kind = folder_kind(path)
    if kind is not None:
        return kind, None
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return None, (f"{path} holds only pickle-based checkpoint(s) {pickles}, not a pipeline folder; trust never "
                      f"unpickles weights. {CONVERT}")
    return None, f"{path} has neither {SD_INDEX} nor {WORLD_INDEX}: it is not a pipeline folder; expected {EXPECTED}"


def components_problem(path: Path, kind: str) -> str | None:
    """What a pipeline folder of `kind` lacks (component folders, safetensors weights), or None."""
    path = Path(path)
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        return f"{path} lacks component folder(s) {', '.join(missing)}; expected {EXPECTED}"
    # The world's identity VAE has no weights.
    for c in WEIGHTED if kind == KIND_SD else ("text_encoder", "unet"):
        folder = path / c
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            hint = f" (found pickle weights {pickles}, which trust does not load)" if pickles else ""
            return (f"{folder} has no .safetensors weights{hint}; re-save the pipeline with "
                    "save_pretrained(folder, safe_serialization=True) in a trusted environment")
    return None


def model_problem(path: Path) -> str | None:
    """Everything the loader would refuse about `path`, found without loading it; None when fine."""
    kind, why = kind_problem(path)
    return why or components_problem(path, kind)


def variant(component: Path) -> str | None:
    """The weights variant a component folder holds: None for the plain file names
    (`diffusion_pytorch_model.safetensors`, `model.safetensors`), else the variant of its
    `<name>.<variant>.safetensors` files (SD's `fp16`), which diffusers/transformers load only when
    told (`variant=`)."""
    names = [p.name for p in Path(component).glob("*.safetensors")]
    if not names or any(n.count(".") == 1 for n in names):
        return None
    return names[0].rsplit(".", 2)[1]
