"""The run cache: a training already done is loaded, not redone; every request can be logged."""
import json

import torch

from zsadlab import engine
from zsadlab.data import ensure_dataset
from zsadlab.engine.cache import data_identity, load_or_train, training_key
from zsadlab.profiles import get_profile


def _trained(tmp_path, cache, **changes):
    profile = get_profile("smoke", quiet=True)
    model = engine.build_model("anomalyclip", profile, "cpu", **changes)
    root = ensure_dataset("synthetic_industrial", tmp_path / "data")
    data = engine.dataset_for(model, root, "test", require_masks=True)
    return model, load_or_train(model, data, cache, epochs=1, max_steps_per_epoch=2, progress=False)


def test_keys_are_equal_for_equal_parts_and_differ_for_any_change():
    base = dict(method="anomalyclip", config={"features": (24,)}, seed=111, epochs=15)
    assert training_key(**base) == training_key(**dict(reversed(list(base.items()))))
    assert training_key(**base) != training_key(**{**base, "epochs": 14})
    assert training_key(**base) != training_key(**{**base, "config": {"features": (6, 12, 18, 24)}})


def test_a_second_request_for_the_same_training_reuses_it_with_the_same_weights(tmp_path, monkeypatch):
    log = tmp_path / "trainings.json"
    monkeypatch.setenv("ZSADLAB_TRAININGS_LOG", str(log))
    monkeypatch.setenv("ZSADLAB_NOTEBOOK", "nb")
    first_model, first = _trained(tmp_path, tmp_path / "cache")
    second_model, second = _trained(tmp_path, tmp_path / "cache")
    assert (first.action, second.action) == ("trained", "reused")
    assert first.key == second.key and first.history["total"] == second.history["total"]
    for a, b in zip(first_model.prompt_learner.parameters(), second_model.prompt_learner.parameters()):
        assert torch.equal(a, b)
    assert [e["action"] for e in json.loads(log.read_text())] == ["trained", "reused"]


def test_another_config_is_another_training(tmp_path):
    _, first = _trained(tmp_path, tmp_path / "cache")
    _, other = _trained(tmp_path, tmp_path / "cache", loss="global")
    assert other.action == "trained" and other.key != first.key


def test_a_budget_subset_is_other_training_data(tmp_path):
    profile = get_profile("smoke", quiet=True)
    model = engine.build_model("anomalyclip", profile, "cpu")
    data = engine.dataset_for(model, ensure_dataset("synthetic_industrial", tmp_path / "data"), "test")
    smaller = data.subset(data.classes[0])
    assert data_identity(data)["files"] != data_identity(smaller)["files"]


def test_another_draw_of_a_synthetic_set_elsewhere_is_another_training(tmp_path):
    profile = get_profile("smoke", quiet=True)
    model = engine.build_model("anomalyclip", profile, "cpu")
    first = engine.dataset_for(model, ensure_dataset("synthetic_ultrasound", tmp_path / "a", seed=0), "test")
    other = engine.dataset_for(model, ensure_dataset("synthetic_ultrasound", tmp_path / "b", seed=1), "test")
    assert data_identity(first) != data_identity(other)


def test_the_recipe_the_training_set_chooses_is_in_the_key(marked_toy_set, monkeypatch):
    from zsadlab.engine import cache

    calls = []
    monkeypatch.setattr(cache, "train", lambda model, data, epochs, batch_size, **options: calls.append(
        (epochs, batch_size, model.config.aug_rate)) or {})
    profile = get_profile("smoke", quiet=True)
    root = marked_toy_set("mvtec")
    keys = []
    for name in ("mvtec", "visa"):  # the same images, marked as another registry dataset
        (root / ".zsadlab-prepared").write_text(f"prepared by zsadlab: {name}\n", encoding="utf-8")
        model = engine.build_model("vand", profile, "cpu", epochs=None)
        keys.append(load_or_train(model, engine.dataset_for(model, root, "test"), root / "cache", progress=False).key)
    assert calls == [(3, 8, 0.2), (15, 8, 0.0)] and keys[0] != keys[1]


def test_the_precision_is_part_of_the_training_key(tmp_path, monkeypatch):
    from zsadlab.engine import cache

    profile = get_profile("smoke", quiet=True)
    model = engine.build_model("vand", profile, "cpu")
    data = engine.dataset_for(model, ensure_dataset("synthetic_industrial", tmp_path / "data"), "test")
    monkeypatch.setattr(cache, "train", lambda *args, **kwargs: {"epoch_total": []})
    keys = {}
    for precision in ("fp16", "fp32"):  # what the method's precision resolves to on CUDA with and without --amp
        monkeypatch.setattr(cache, "precision_of", lambda model, device, amp, p=precision: p)
        keys[precision] = load_or_train(model, data, tmp_path / "cache", epochs=1, progress=False).key
    assert keys["fp16"] != keys["fp32"]


def test_a_cache_entry_another_process_is_writing_is_refused_naming_it_and_its_pid(tmp_path, lock_holder):
    import pytest

    from zsadlab.utils import FolderBusyError

    _, first = _trained(tmp_path, tmp_path / "cache")
    holder = lock_holder(first.folder)
    with pytest.raises(FolderBusyError, match=rf"{first.key}.*pid {holder.pid}"):
        _trained(tmp_path, tmp_path / "cache")


def test_the_same_data_under_two_roots_has_the_same_key_so_run_caches_travel(tmp_path):
    import shutil

    profile = get_profile("smoke", quiet=True)
    model = engine.build_model("anomalyclip", profile, "cpu")
    here = ensure_dataset("synthetic_industrial", tmp_path / "clone_a" / "data")
    there = tmp_path / "elsewhere" / "data" / "synthetic_industrial"
    shutil.copytree(here, there)
    identities = [data_identity(engine.dataset_for(model, root, "test", require_masks=True)) for root in (here, there)]
    assert identities[0] == identities[1]
    assert str(tmp_path) not in json.dumps(identities[0])  # no absolute path in what a key is made of
    keys = [training_key(method="anomalyclip", config=model.config, data=identity, seed=111, epochs=1)
            for identity in identities]
    assert keys[0] == keys[1]


def test_a_run_folder_copied_to_another_cache_and_data_root_is_reused_not_refused(tmp_path):
    import shutil

    _, first = _trained(tmp_path / "a", tmp_path / "a" / "cache")
    shutil.copytree(tmp_path / "a" / "cache", tmp_path / "b" / "cache")
    _, second = _trained(tmp_path / "b", tmp_path / "b" / "cache")
    assert (first.action, second.action) == ("trained", "reused") and first.key == second.key
