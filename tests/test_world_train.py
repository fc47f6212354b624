import torch

from trust.models import load_model
from trust.world.train import WorldTrainConfig, train_world

TINY = dict(steps=40, batch_size=16, unet_channels=(16, 32), text_dim=32, text_layers=1, text_heads=2,
            warmup_steps=5, lr=2e-3, checkpoint_every=1000)


def _state(folder):
    parts = load_model(folder)
    return {**{f"u.{k}": v for k, v in parts.unet.state_dict().items()},
            **{f"t.{k}": v for k, v in parts.text_encoder.state_dict().items()}}


def test_short_training_run_lowers_the_loss(tmp_path):
    summary = train_world(WorldTrainConfig(**TINY), tmp_path / "m", tmp_path / "ck", progress=False)
    losses = summary["losses"]
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert load_model(tmp_path / "m").kind == "world"


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    import pytest

    import trust.world.train as train_mod

    cfg = WorldTrainConfig(**{**TINY, "steps": 6, "checkpoint_every": 3})
    train_world(cfg, tmp_path / "full", tmp_path / "ck_full", progress=False)

    real_batch = train_mod.scene_batch

    def killed_at_step_4(seed, index, *a, **k):
        if index == 4:
            raise KeyboardInterrupt("simulated kill")
        return real_batch(seed, index, *a, **k)

    monkeypatch.setattr(train_mod, "scene_batch", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_world(cfg, tmp_path / "resumed", tmp_path / "ck", progress=False)
    assert not (tmp_path / "resumed").exists()  # nothing half-written
    monkeypatch.setattr(train_mod, "scene_batch", real_batch)
    summary = train_world(cfg, tmp_path / "resumed", tmp_path / "ck", progress=False)
    assert summary["resumed_from"] == 3
    a, b = _state(tmp_path / "full"), _state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_for_other_settings_is_not_resumed(tmp_path):
    train_world(WorldTrainConfig(**{**TINY, "steps": 2, "checkpoint_every": 1}), tmp_path / "a", tmp_path / "ck", progress=False)
    summary = train_world(WorldTrainConfig(**{**TINY, "steps": 2, "lr": 1e-4}), tmp_path / "b", tmp_path / "ck", progress=False)
    assert summary["resumed_from"] == 0
