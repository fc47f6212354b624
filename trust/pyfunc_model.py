"""A registered version as an MLflow pyfunc model: `mlflow.pyfunc.load_model("models:/NAME@production")`
generates images with the erasure applied, where MLflow users expect a model.

Every package the registry stores carries an `MLmodel` file (`write_mlmodel`, called by
`registry.register_version` before the package is hashed): flavour `python_function` with this module
as its loader and the package folder itself as its data; the signature says what goes in and out:

- input: a `prompt` string column (a DataFrame, a list of prompts or one prompt);
- params: `seed` (image i uses seed + i), `steps` (sampling steps), `guidance` (classifier-free scale);
- output: uint8 images, shape (N, H, W, 3).

Nothing is unpickled: MLflow imports this module and calls `_load_pyfunc(folder)`. The loader checks
the folder's files against its manifest (a copy MLflow downloaded must be what was stored), loads the
base model recorded in `pipeline.json` (a local folder, safetensors), and applies the delta, which
refuses any base other than the one it was made from. The registry's own check (tags in the tracking
store, `trust lineage`) stays the authority on whether a version's package was changed.
"""

from __future__ import annotations

from pathlib import Path

MLMODEL = "MLmodel"
MLFLOW_ADDS = "registered_model_meta"  # mlflow.store.artifact.models_artifact_repo
DEFAULTS = {"seed": 0, "steps": 20, "guidance": 4.0}


def signature():
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), "images")]),
        params=ParamSchema([ParamSpec("seed", "long", DEFAULTS["seed"]), ParamSpec("steps", "long", DEFAULTS["steps"]),
                            ParamSpec("guidance", "double", DEFAULTS["guidance"])]))


def write_mlmodel(package: Path, delta: str = "delta.safetensors") -> Path:
    """Write `package/MLmodel`. Its content depends only on the delta's bytes (the model uuid is their
    hash; no creation time, MLflow fills one in when it reads the file), so the same package hashes the
    same whenever it is registered again (the registry's copies are content-addressed)."""
    import mlflow.pyfunc
    import yaml
    from mlflow.models import Model

    from trust.registry import sha256_file

    package = Path(package)
    digest = sha256_file(package / delta)
    model = Model(signature=signature(), model_uuid=digest[:32])
    mlflow.pyfunc.add_to_model(model, loader_module=__name__)
    spec = {k: v for k, v in model.to_dict().items() if k != "utc_time_created"}
    (package / MLMODEL).write_text(yaml.safe_dump(spec, default_flow_style=False, sort_keys=True))
    return package / MLMODEL


class ErasedPipeline:
    """What `mlflow.pyfunc.load_model` wraps: prompts in, images out."""

    def __init__(self, parts, folder: Path):
        self.parts, self.folder = parts, folder

    def predict(self, data, params: dict | None = None):
        import numpy as np
        import torch

        from trust.sampling import generate

        prompts = _prompts(data)
        p = {**DEFAULTS, **{k: v for k, v in (params or {}).items() if v is not None}}
        seeds = [int(p["seed"]) + i for i in range(len(prompts))]
        images = generate(self.parts, prompts, seeds, steps=int(p["steps"]), guidance=float(p["guidance"]))
        x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return np.ascontiguousarray(x.permute(0, 2, 3, 1).cpu().numpy())


def _prompts(data) -> list[str]:
    if isinstance(data, str):
        return [data]
    if hasattr(data, "columns"):  # a DataFrame: its `prompt` column
        if "prompt" not in data.columns:
            raise ValueError(f"the model takes a 'prompt' column; got columns {list(data.columns)}")
        return [str(v) for v in data["prompt"].tolist()]
    prompts = [str(v) for v in data]
    if not prompts:
        raise ValueError("no prompts given")
    return prompts


def _load_pyfunc(path: str) -> ErasedPipeline:
    from trust.registry import RegistryError, check_files, rebuild

    folder = Path(path)
    # MLflow adds one file of its own to a copy it downloads for a models:/ reference
    bad = [f"{r['path']} ({r['status']})" for r in check_files(folder)
           if r["status"] != "ok" and not (r["status"] == "unexpected" and r["path"] == MLFLOW_ADDS)]
    if bad:
        raise RegistryError(f"{folder}: the package is not what was stored ({', '.join(bad)}); refusing to load it")
    return ErasedPipeline(rebuild(folder, f"pyfunc model {folder}")[0], folder)
