"""Specification of zsadlab.data.layout: the MVTec AD folder layout and AnomalyCLIP's meta.json."""
from __future__ import annotations

import json

import pytest

from zsadlab.data import DatasetError
from zsadlab.data.layout import Sample, meta_of, samples


@pytest.fixture
def mvtec_root(tmp_path, write_image, write_mask):
    """One class in the common layout: 2 train good, 1 test good, 1 crack with its mask."""
    root = tmp_path / "root"
    write_image(root / "bottle/train/good/000.png")
    write_image(root / "bottle/train/good/001.png")
    write_image(root / "bottle/test/good/000.png")
    write_image(root / "bottle/test/crack/000.png")
    write_mask(root / "bottle/ground_truth/crack/000_mask.png")
    return root


def test_scanning_finds_normal_and_anomalous_images_with_their_masks(mvtec_root):
    test = samples(mvtec_root, "test")
    assert [(s.label, s.defect, s.has_mask) for s in test] == [(1, "crack", True), (0, "good", True)]
    assert test[0].mask_path == mvtec_root / "bottle/ground_truth/crack/000_mask.png"
    assert test[1].mask_path is None  # normal: an implicit all-zero mask
    assert len(samples(mvtec_root, "train")) == 2


def test_a_class_without_ground_truth_folder_is_image_level_only(mvtec_root):
    for mask in (mvtec_root / "bottle/ground_truth/crack").iterdir():
        mask.unlink()
    (mvtec_root / "bottle/ground_truth/crack").rmdir()
    (mvtec_root / "bottle/ground_truth").rmdir()
    assert not any(s.has_mask for s in samples(mvtec_root, "test"))


def test_meta_json_written_from_folders_has_the_official_item_shape(mvtec_root):
    meta = meta_of(mvtec_root)
    assert set(meta) == {"train", "test"}
    crack = next(i for i in meta["test"]["bottle"] if i["anomaly"] == 1)
    assert crack == {
        "img_path": "bottle/test/crack/000.png",
        "mask_path": "bottle/ground_truth/crack/000_mask.png",
        "cls_name": "bottle",
        "specie_name": "crack",
        "anomaly": 1,
    }
    good = next(i for i in meta["test"]["bottle"] if i["anomaly"] == 0)
    assert good["mask_path"] == "" and good["specie_name"] == "good"


def test_meta_json_takes_precedence_over_the_folders(mvtec_root):
    meta = meta_of(mvtec_root)
    meta["test"]["bottle"] = [i for i in meta["test"]["bottle"] if i["anomaly"] == 1]
    (mvtec_root / "meta.json").write_text(json.dumps(meta))
    assert [s.defect for s in samples(mvtec_root, "test")] == ["crack"]


def test_meta_json_round_trip_gives_the_same_samples(mvtec_root):
    scanned = samples(mvtec_root, "test")
    (mvtec_root / "meta.json").write_text(json.dumps(meta_of(mvtec_root)))
    assert samples(mvtec_root, "test") == scanned


def test_meta_json_with_empty_mask_paths_is_image_level_only(tmp_path, write_image):
    write_image(tmp_path / "Brain/test/yes/1.png")
    item = {"img_path": "Brain/test/yes/1.png", "mask_path": "", "cls_name": "brain", "specie_name": "tumor",
            "anomaly": 1}
    (tmp_path / "meta.json").write_text(json.dumps({"train": {}, "test": {"brain": [item]}}))
    assert samples(tmp_path, "test") == [Sample(tmp_path / "Brain/test/yes/1.png", None, 1, "brain", "tumor", False)]


def test_broken_meta_json_names_the_file(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match="meta.json"):
        samples(tmp_path, "test")


def test_meta_item_missing_a_key_names_the_key(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"a": [{"img_path": "x.png", "cls_name": "a"}]}}))
    with pytest.raises(DatasetError, match="anomaly"):
        samples(tmp_path, "test")


def test_folder_in_neither_format_is_an_unknown_layout_with_the_prepare_command(tmp_path, write_image):
    write_image(tmp_path / "random/picture.png")
    with pytest.raises(DatasetError, match="zsadlab data prepare"):
        samples(tmp_path, "test")


def test_unknown_split_is_rejected(mvtec_root):
    with pytest.raises(DatasetError, match="split"):
        samples(mvtec_root, "val")


@pytest.mark.parametrize("escape", ["../outside.png", "/etc/passwd"])
def test_meta_json_paths_outside_the_root_are_refused(escape, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    item = {"img_path": escape, "mask_path": "", "cls_name": "x", "specie_name": "good", "anomaly": 0}
    (root / "meta.json").write_text(json.dumps({"train": {}, "test": {"x": [item]}}))
    with pytest.raises(DatasetError, match="outside"):
        samples(root, "test")
