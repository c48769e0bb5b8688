"""Seeding, device choice, atomic writes and safe checkpoint reads."""
import random

import numpy as np
import pytest
import torch

from zsadlab.utils import load_torch_file, pick_device, save_torch_atomic, seed_everything, write_json_atomic


def test_seed_everything_repeats_python_numpy_and_torch_draws():
    draws = []
    for _ in range(2):
        seed_everything(7)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]


def test_pick_device_honours_an_explicit_choice_and_the_environment(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("ZSADLAB_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.delenv("ZSADLAB_DEVICE")
    assert pick_device().type in {"cpu", "cuda", "mps"}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json_atomic({"a": 1}, tmp_path / "result.json")
    with pytest.raises(TypeError):
        write_json_atomic({"a": object()}, path)
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_checkpoints_roundtrip_and_bad_files_are_named(tmp_path):
    path = save_torch_atomic({"w": torch.ones(2)}, tmp_path / "ckpt.pt")
    assert torch.equal(load_torch_file(path)["w"], torch.ones(2))
    (tmp_path / "truncated.pt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_torch_file(tmp_path / "truncated.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_torch_file(tmp_path / "nope.pt")


class Arbitrary:
    """Any class: unpickling it would run code from the file."""


def test_pickled_objects_are_refused_without_suggesting_unsafe_loading(tmp_path):
    torch.save({"obj": Arbitrary()}, tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"garbage, not a checkpoint")
    for name, reason in (("evil.pt", "pickled Python object"), ("garbage.pt", "not a torch.save file")):
        with pytest.raises(ValueError, match=reason) as err:
            load_torch_file(tmp_path / name)
        message = str(err.value)
        assert name in message and "weights_only" not in message and "\n" not in message
