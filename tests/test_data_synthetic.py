"""Specification of the synthetic smoke sets and ensure_dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zsadlab.data import AnomalyDataset, DatasetError, ensure_dataset, prepare
from zsadlab.data.synthetic import DEFECTS, SIZE, industrial_classes


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["synthetic_industrial", "synthetic_ultrasound"])
def test_same_seed_gives_byte_identical_files(name, tmp_path):
    first = prepare(name, out=tmp_path / "a", seed=7)
    second = prepare(name, out=tmp_path / "b", seed=7)
    assert _files(first) == _files(second)
    assert _files(prepare(name, out=tmp_path / "c", seed=8)) != _files(first)


def test_industrial_set_has_3_classes_of_16_train_6_good_8_defective(synthetic_industrial_root):
    test = AnomalyDataset(synthetic_industrial_root, "test", image_size=None, require_masks=True)
    assert test.classes == ["brick", "coffee", "gravel"]
    for cls in test.classes:
        sub = test.subset(cls)
        assert (len(sub), int(sub.labels.sum())) == (14, 8)
        assert {s.defect for s in sub.samples if s.label} == set(DEFECTS)
    assert len(AnomalyDataset(synthetic_industrial_root, "train")) == 48
    assert test[0]["image"].shape == (3, SIZE, SIZE)


def test_every_synthetic_defective_image_has_a_non_empty_mask(synthetic_industrial_root):
    test = AnomalyDataset(synthetic_industrial_root, "test", image_size=None)
    assert all(bool(item["mask"].any()) == bool(item["label"]) for item in test)


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defect_mask_is_exact_pixels_outside_it_are_untouched(defect):
    rng = np.random.default_rng(0)
    image = industrial_classes()["brick"](rng)  # [S, S, 3]
    painted, region = DEFECTS[defect](image, rng)
    assert region.shape == (SIZE, SIZE) and region.any()
    assert np.array_equal(painted[~region], image[~region])
    assert not np.array_equal(painted[region], image[region])


def test_ultrasound_nodules_are_darker_than_the_surrounding_tissue(tmp_path):
    root = prepare("synthetic_ultrasound", out=tmp_path / "us")
    test = AnomalyDataset(root, "test", image_size=None, require_masks=True)
    assert test.classes == ["thyroid"] and (len(test), int(test.labels.sum())) == (14, 8)
    for item in (it for it in test if it["label"]):
        inside = item["image"][0][item["mask"] > 0].mean()
        outside = item["image"][0][item["mask"] == 0].mean()
        assert inside < outside


def test_ensure_dataset_generates_a_synthetic_set_once(tmp_path):
    root = ensure_dataset("synthetic_ultrasound", tmp_path)
    assert root == tmp_path / "synthetic_ultrasound" and (root / "meta.json").is_file()
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert ensure_dataset("synthetic_ultrasound", tmp_path) == root
    assert (root / "meta.json").stat().st_mtime_ns == stamp


def test_ensure_dataset_on_a_missing_real_set_gives_the_prepare_command(tmp_path):
    with pytest.raises(DatasetError, match=f"zsadlab data prepare mvtec --raw RAW_DIR --out {tmp_path}/mvtec"):
        ensure_dataset("mvtec", tmp_path)


def test_ensure_dataset_rejects_unknown_names_listing_known_ones(tmp_path):
    with pytest.raises(DatasetError, match="synthetic_industrial"):
        ensure_dataset("imagenet", tmp_path)


@pytest.mark.parametrize("name", ["synthetic_industrial", "synthetic_ultrasound"])
def test_few_shot_prompt_sets_differ_between_seeds_at_every_k_of_the_series(name, tmp_path):
    from zsadlab.engine import load_or_sample_prompt_set

    train = AnomalyDataset(ensure_dataset(name, tmp_path, seed=0), "train", image_size=None)
    for cls in train.classes:
        normals = sorted(str(s.path.relative_to(train.root)) for s in train.samples if s.class_name == cls)
        for shots in (2, 4, 8):  # notebook 08's shots_list, with its prompt seeds 0, 1, 2
            drawn = [frozenset(load_or_sample_prompt_set(tmp_path / "prompts", name, cls, shots, seed, normals))
                     for seed in (0, 1, 2)]
            assert len(set(drawn)) == 3, (cls, shots)
