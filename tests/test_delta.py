"""The tuned-weights delta on hand-made tensors: what it holds, what it refuses, what it rebuilds.

A small nn.Module stands in for the UNet, so every expected value is read off the test's own numbers.
"""

from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from trust.delta import FORMAT, NonFiniteError, apply_delta, changed_tensors, non_finite, read_delta, save_delta


def _unet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))


def _parts(unet, fingerprint="base-A"):
    """What apply_delta uses of DiffusionParts: the UNet and the base model's fingerprint."""
    return SimpleNamespace(unet=unet, fingerprint=lambda: fingerprint)


def _tuned(base):
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["1.weight"] += 1.0
    return tuned


def test_non_finite_counts_inf_and_nan_values_and_names_their_tensors():
    t = {"a": torch.tensor([1.0, float("nan"), float("inf")]), "b": torch.ones(2),
         "c": torch.tensor([-float("inf")]), "steps": torch.tensor([3])}
    assert non_finite(t) == (3, ["a", "c"])
    assert non_finite({"b": torch.ones(2)}) == (0, [])


def test_changed_tensors_are_exactly_the_ones_that_differ():
    base = _unet().state_dict()
    tuned = _tuned(base)
    assert list(changed_tensors(base, tuned)) == ["1.weight"]
    assert changed_tensors(base, {k: v.clone() for k, v in base.items()}) == {}
    with pytest.raises(ValueError, match="different parameter names"):
        changed_tensors(base, {**tuned, "extra": torch.zeros(1)})


def test_save_delta_writes_only_the_changed_tensors_with_their_metadata(tmp_path):
    base = _unet().state_dict()
    tuned = _tuned(base)
    path = tmp_path / "delta.safetensors"
    summary = save_delta(base, tuned, path, {"base_fingerprint": "base-A", "steps": 7, "method": {"name": "trust"}})
    assert summary == {"tensors": 1, "parameters": 4, "row_tensors": 0}  # 1.weight is 2 x 2, both rows changed
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["unet.1.weight"]
        assert torch.equal(f.get_tensor("unet.1.weight"), tuned["1.weight"])
        meta = f.metadata()
    # strings as they are, everything else as JSON, and the format mark
    assert meta == {"format": FORMAT, "base_fingerprint": "base-A", "steps": "7", "method": '{"name": "trust"}'}


def test_a_non_finite_delta_is_not_written(tmp_path):
    base = _unet().state_dict()
    tuned = _tuned(base)
    tuned["1.weight"][0, 0] = float("nan")
    path = tmp_path / "delta.safetensors"
    with pytest.raises(NonFiniteError, match="1 of the tuned weights.*1.weight"):
        save_delta(base, tuned, path, {})
    assert not path.exists()


def test_read_delta_refuses_a_file_of_another_format(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"unet.1.weight": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(ValueError, match="not a trust weights delta"):
        read_delta(plain)
    other = tmp_path / "other.safetensors"
    save_file({"unet.1.weight": torch.zeros(2, 2)}, str(other), metadata={"format": "trust-delta-v0"})
    with pytest.raises(ValueError, match="trust-delta-v0"):
        read_delta(other)


def test_apply_delta_rebuilds_the_tuned_unet_in_place(tmp_path):
    base = _unet().state_dict()
    tuned = _tuned(base)
    path = tmp_path / "delta.safetensors"
    save_delta(base, tuned, path, {"base_fingerprint": "base-A"})
    tensors, meta = read_delta(path)
    assert meta["base_fingerprint"] == "base-A" and list(tensors) == ["unet.1.weight"]

    unet = _unet()
    parts = _parts(unet)
    assert apply_delta(parts, path) is parts
    after = unet.state_dict()
    for k in base:
        assert torch.equal(after[k], tuned[k]), k  # the changed tensor is the tuned one, the rest the base's


def test_apply_delta_refuses_a_delta_made_from_another_base(tmp_path):
    base = _unet().state_dict()
    path = tmp_path / "delta.safetensors"
    save_delta(base, _tuned(base), path, {"base_fingerprint": "base-A"})
    unet = _unet()
    with pytest.raises(ValueError, match="made from base model base-A, but the loaded base is base-B"):
        apply_delta(_parts(unet, "base-B"), path)
    assert torch.equal(unet.state_dict()["1.weight"], base["1.weight"])  # nothing was written
    # asked not to check (the caller verified lineage itself): applied
    apply_delta(_parts(unet, "base-B"), path, check_fingerprint=False)
    assert torch.equal(unet.state_dict()["1.weight"], base["1.weight"] + 1.0)


def test_a_delta_without_a_recorded_base_applies_to_any_base(tmp_path):
    base = _unet().state_dict()
    path = tmp_path / "delta.safetensors"
    save_delta(base, _tuned(base), path, {})
    unet = _unet()
    apply_delta(_parts(unet, "base-B"), path)
    assert torch.equal(unet.state_dict()["1.weight"], base["1.weight"] + 1.0)


def test_apply_delta_refuses_unknown_tensors_and_non_finite_values(tmp_path):
    unet = _unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    unknown = tmp_path / "unknown.safetensors"
    save_file({"unet.1.weight": torch.zeros(2, 2), "unet.9.weight": torch.zeros(1)}, str(unknown),
              metadata={"format": FORMAT})
    with pytest.raises(ValueError, match="tensors the UNet does not have: \\['unet.9.weight'\\]"):
        apply_delta(_parts(unet), unknown)
    bad = tmp_path / "bad.safetensors"
    save_file({"unet.1.weight": torch.tensor([[1.0, float("inf")], [0.0, 0.0]])}, str(bad), metadata={"format": FORMAT})
    with pytest.raises(NonFiniteError, match="1 inf or NaN values \\(in unet.1.weight\\)"):
        apply_delta(_parts(unet), bad)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, before[k]), k  # neither refusal wrote anything


def _wide():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 10), nn.Linear(10, 3))


def test_a_change_of_a_few_rows_is_stored_as_those_rows_and_rebuilds_the_tuned_tensor(tmp_path):
    """TRUST changes rows: rows 2 and 7 of a 10 x 4 weight are stored as 2 indices and 2 x 4 values
    (10 numbers instead of 40); a changed bias and a weight with most rows changed stay whole."""
    base = _wide().state_dict()
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["0.weight"][2] += 0.5
    tuned["0.weight"][7, 1] -= 2.0
    tuned["0.bias"][0] += 1.0
    tuned["1.weight"][:, 0] += 1.0  # every row of the 3 x 10 weight: whole
    path = tmp_path / "delta.safetensors"
    summary = save_delta(base, tuned, path, {"base_fingerprint": "base-A"})
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        assert keys == {"unet.0.weight@rows", "unet.0.weight@values", "unet.0.bias", "unet.1.weight"}
        assert f.get_tensor("unet.0.weight@rows").tolist() == [2, 7]
        assert torch.equal(f.get_tensor("unet.0.weight@values"), tuned["0.weight"][[2, 7]])
        assert f.metadata()["format"] == "trust-delta-v2"
    assert summary == {"tensors": 3, "parameters": 8 + 10 + 30, "row_tensors": 1}
    unet = _wide()
    apply_delta(_parts(unet), path)
    after = unet.state_dict()
    for k in base:
        assert torch.equal(after[k], tuned[k]), k


def test_a_delta_in_the_older_whole_tensor_format_still_applies(tmp_path):
    base = _unet().state_dict()
    old = tmp_path / "v1.safetensors"
    save_file({"unet.1.weight": base["1.weight"] + 1.0}, str(old), metadata={"format": "trust-delta-v1"})
    unet = _unet()
    apply_delta(_parts(unet), old)
    assert torch.equal(unet.state_dict()["1.weight"], base["1.weight"] + 1.0)


@pytest.mark.parametrize("damage", ["index out of range", "values of another shape", "rows without values"])
def test_stored_rows_that_do_not_fit_the_tensor_are_refused_before_anything_is_written(tmp_path, damage):
    unet = _wide()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    rows, values = torch.tensor([2, 7]), torch.zeros(2, 4)
    if damage == "index out of range":
        rows = torch.tensor([2, 10])
    elif damage == "values of another shape":
        values = torch.zeros(2, 5)
    tensors = {"unet.0.bias": torch.zeros(10), "unet.0.weight@rows": rows}
    if damage != "rows without values":
        tensors["unet.0.weight@values"] = values
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT})
    with pytest.raises(ValueError, match="0.weight's stored rows do not fit the UNet's tensor \\(10, 4\\)"):
        apply_delta(_parts(unet), path)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, before[k]), k
