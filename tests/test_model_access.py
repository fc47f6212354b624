import pytest
import torch
from safetensors.torch import save_file

from trust.models import KIND_SD, KIND_WORLD, ModelLoadError, load_model, save_model
from trust.sampling import generate

from tiny_models import tiny_sd_parts


def test_tiny_sd_pipeline_saves_and_loads_back(world_tokenizer, tmp_path):
    parts = tiny_sd_parts(world_tokenizer)
    save_model(parts, tmp_path / "sd")
    loaded = load_model(tmp_path / "sd")
    assert loaded.kind == KIND_SD
    assert loaded.fingerprint() == parts.fingerprint()
    assert loaded.image_size == 16 and loaded.latent_shape == (4, 8, 8)
    # Every weight file on disk is safetensors.
    assert not [p for p in (tmp_path / "sd").rglob("*") if p.suffix in (".bin", ".ckpt", ".pt")]
    a = generate(parts, ["a red circle"] * 2, [1, 2], steps=3)
    b = generate(loaded, ["a red circle"] * 2, [1, 2], steps=3)
    assert a.shape == (2, 3, 16, 16)
    assert torch.allclose(a, b, atol=1e-5)


def test_vae_encode_decode_shapes(world_tokenizer):
    parts = tiny_sd_parts(world_tokenizer)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = parts.encode_images(x)
    assert z.shape == (2, 4, 8, 8)
    assert parts.decode_latents(z).shape == (2, 3, 16, 16)


def test_fingerprint_changes_with_any_weight(world_tokenizer):
    parts = tiny_sd_parts(world_tokenizer)
    before = parts.fingerprint()
    with torch.no_grad():
        parts.unet.conv_out.bias[0] += 1e-3
    assert parts.fingerprint() != before


def test_missing_path_names_what_is_expected(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist.*model_index.json.*trust_model.json"):
        load_model(tmp_path / "nope")


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="not a pipeline folder"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", ["sd-v1-4.ckpt", "model.pt", "pytorch_model.bin", "weights.pkl"])
def test_pickle_files_are_refused(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle.*never unpickles"):
        load_model(f)


def test_single_safetensors_file_gets_conversion_hint(tmp_path):
    f = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, str(f))
    with pytest.raises(ModelLoadError, match="from_single_file"):
        load_model(f)


def test_pipeline_folder_with_only_pickle_weights_is_refused(world_tokenizer, tmp_path):
    save_model(tiny_sd_parts(world_tokenizer), tmp_path)
    st = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    st.rename(st.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match=r"unet has no .safetensors weights.*diffusion_pytorch_model.bin"):
        load_model(tmp_path)


def test_missing_component_is_named(world_tokenizer, tmp_path):
    save_model(tiny_sd_parts(world_tokenizer), tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "vae")
    with pytest.raises(ModelLoadError, match="lacks component folder.*vae"):
        load_model(tmp_path)


def test_world_folder_loads_with_identity_vae(shipped_world):
    assert shipped_world.kind == KIND_WORLD
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(shipped_world.encode_images(x), x)
    assert torch.equal(shipped_world.decode_latents(x), x)
    assert not any(p.requires_grad for p in shipped_world.unet.parameters())


def test_sampler_matches_stock_diffusers_pipeline(shipped_world):
    from trust.sampling import initial_noise

    ours = generate(shipped_world, ["a red circle", "a blue cross"], [3, 4], steps=10, guidance=4.0)
    pipe = shipped_world.pipeline()
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(["a red circle", "a blue cross"], latents=initial_noise(shipped_world, [3, 4]),
                  num_inference_steps=10, guidance_scale=4.0, output_type="pt").images
    assert torch.allclose((ours + 1) / 2, theirs, atol=1e-5)


def test_images_do_not_depend_on_batching(shipped_world):
    together = generate(shipped_world, ["a red circle", "a green square"], [5, 6], steps=5, batch_size=2)
    alone = generate(shipped_world, ["a green square"], [6], steps=5, batch_size=1)
    assert torch.allclose(together[1], alone[0], atol=1e-5)


@pytest.mark.parametrize("layout", ["plain-names", "fp16-variant"])
def test_half_precision_folders_load_as_float32_and_sample(world_tokenizer, tmp_path, layout):
    """SD's published half-precision weights: fp16 tensors under the plain file names, or only
    `<name>.fp16.safetensors` files (the `fp16` variant). Both load, upcast to float32 (the sampler
    and the fine-tuning compute in float32: fp16 weights crashed localize with a dtype mismatch),
    equal to the float32 model rounded to fp16, and sample."""
    from safetensors.torch import load_file

    from trust.utils.model_kind import model_problem

    parts = tiny_sd_parts(world_tokenizer)
    save_model(parts, tmp_path / "m")
    for comp in ("unet", "text_encoder", "vae"):
        for f in (tmp_path / "m" / comp).glob("*.safetensors"):
            half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(f).items()}
            f.unlink()
            name = f.name if layout == "plain-names" else f.name.replace(".safetensors", ".fp16.safetensors")
            save_file(half, f.with_name(name))
    assert model_problem(tmp_path / "m") is None  # params check accepts both layouts
    loaded = load_model(tmp_path / "m")
    state = loaded.unet.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    want = parts.unet.state_dict()
    assert all(torch.equal(state[k], want[k].half().float()) for k in want if want[k].is_floating_point())
    images = generate(loaded, ["a red circle"], [0], steps=2, guidance=4.0)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_vae_decodes_a_batch_a_few_images_at_a_time(world_tokenizer, monkeypatch):
    """SD-sized latents (64x64) go through the VAE two at a time (a whole evaluate shard of 64
    would need tens of GB at 512 px); each image comes out as when decoded alone."""
    parts = tiny_sd_parts(world_tokenizer)
    real, sizes = parts.vae.decode, []

    def spy(z, **kw):
        sizes.append(len(z))
        return real(z, **kw)

    monkeypatch.setattr(parts.vae, "decode", spy)
    latents = torch.randn(5, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = parts.decode_latents(latents)
        alone = parts.decode_latents(latents[3:4])
    assert sizes[:3] == [2, 2, 1] and images.shape == (5, 3, 128, 128)
    torch.testing.assert_close(images[3:4], alone)


@pytest.mark.parametrize("layout", ["float32", "fp16-variant"])
def test_a_delta_against_the_folders_own_tensors_equals_one_against_a_copy(world_tokenizer, tmp_path, layout):
    """The finetune stage takes its delta against the model folder's tensors, read one at a time
    (no second UNet in memory): the delta file is the one an in-memory copy gives, for float32 and
    fp16-variant folders alike."""
    from safetensors.torch import load_file

    from trust.delta import save_delta
    from trust.models.loading import UnetFileState, base_unet_state

    save_model(tiny_sd_parts(world_tokenizer), tmp_path / "m")
    if layout == "fp16-variant":
        for f in (tmp_path / "m" / "unet").glob("*.safetensors"):
            half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(f).items()}
            f.unlink()
            save_file(half, f.with_name(f.name.replace(".safetensors", ".fp16.safetensors")))
    parts = load_model(tmp_path / "m")
    copy_state = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    lazy = base_unet_state(parts)
    assert isinstance(lazy, UnetFileState) and len(lazy) == len(copy_state)
    name = next(k for k in copy_state if k.endswith("attn2.to_k.weight"))
    with torch.no_grad():
        parts.unet.get_parameter(name)[1].add_(0.5)  # one row of one tensor fine-tuned
    tuned = parts.unet.state_dict()
    a = save_delta(lazy, tuned, tmp_path / "lazy.safetensors", {})
    b = save_delta(copy_state, tuned, tmp_path / "copy.safetensors", {})
    assert a == b and a["tensors"] == 1 and a["row_tensors"] == 1
    got, want = load_file(tmp_path / "lazy.safetensors"), load_file(tmp_path / "copy.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_folder_whose_names_do_not_match_the_loaded_unet_gets_an_in_memory_base(world_tokenizer, tmp_path):
    from safetensors.torch import load_file

    from trust.models.loading import UnetFileState, base_unet_state

    save_model(tiny_sd_parts(world_tokenizer), tmp_path / "m")
    parts = load_model(tmp_path / "m")
    f = next((tmp_path / "m" / "unet").glob("*.safetensors"))
    renamed = {("old." + k if i == 0 else k): v for i, (k, v) in enumerate(load_file(f).items())}
    save_file(renamed, f)  # e.g. an older layout diffusers converted on load
    said = []
    base = base_unet_state(parts, log=said.append)
    assert not isinstance(base, UnetFileState) and base.keys() == parts.unet.state_dict().keys()
    assert said and "in-memory copy" in said[0]
