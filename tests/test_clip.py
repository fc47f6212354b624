"""The one CLIP loader (trust/models/clip.py) and the one key for its folder, model.clip_dir:
clear errors naming the key, safetensors only, old keys refused with their new place."""

import pytest
import yaml

from tiny_models import save_tiny_clip
from trust.config import ParamsError, load_params
from trust.models import ModelLoadError
from trust.models.clip import load_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, world_tokenizer):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", world_tokenizer)


def test_loads_model_processor_and_tokenizer(clip_dir):
    clip = load_clip(clip_dir)
    assert type(clip.model).__name__ == "CLIPModel" and not clip.model.training
    assert not any(p.requires_grad for p in clip.model.parameters())
    assert clip.tokenizer is clip.processor.tokenizer and clip.folder == clip_dir


def test_not_set_names_the_key_and_both_users():
    with pytest.raises(ModelLoadError, match=r"model\.clip_dir is not set: localize\.scorer clip and "
                                             r"evaluate\.detector\.kind clip need"):
        load_clip(None)


@pytest.mark.parametrize("drop, says", [(["config.json"], "no CLIP model"), (["model.safetensors"], "safetensors"),
                                        (["preprocessor_config.json", "processor_config.json"], "no CLIP processor")])
def test_incomplete_folder_says_what_is_missing(clip_dir, tmp_path, drop, says):
    import shutil

    folder = shutil.copytree(clip_dir, tmp_path / "clip")
    for name in drop:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=rf"model\.clip_dir: .*{says}"):
        load_clip(folder)


def test_pickled_weights_are_not_loaded(clip_dir, tmp_path):
    import shutil

    import torch

    folder = shutil.copytree(clip_dir, tmp_path / "clip")
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="never pickled"):
        load_clip(folder)


@pytest.mark.parametrize("section, old", [({"localize": {"clip_path": "models/clip"}}, "localize.clip_path"),
                                          ({"evaluate": {"detector": {"clip_dir": "models/clip"}}},
                                           "evaluate.detector.clip_dir")])
def test_old_keys_name_their_new_place(tmp_path, section, old):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(section))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert f"{old} moved to model.clip_dir: set model.clip_dir: models/clip and remove {old}" in str(e.value)
    assert "unknown key" not in str(e.value)


def test_params_check_refuses_clip_users_without_the_folder(tmp_path, clip_dir):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"localize": {"scorer": "clip"},
                                    "evaluate": {"detector": {"kind": "clip", "clip_labels": ["a", "b"]}}}))
    with pytest.raises(ParamsError, match=r"model\.clip_dir: not set, but localize\.scorer: clip and "
                                          r"evaluate\.detector\.kind: clip need a local CLIP folder"):
        load_params(path)
    path.write_text(yaml.safe_dump({"model": {"clip_dir": str(clip_dir)}, "localize": {"scorer": "clip"}}))
    assert load_params(path).model.clip_dir == clip_dir
