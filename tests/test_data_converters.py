"""Specification of the converters: every registry entry turns its raw layout into the common one.

Each real dataset gets a tiny hand-made raw folder in its official layout; the two
real archives in ``../shared/data`` are converted from a subset of their members.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from zsadlab.data import AnomalyDataset, DatasetError, prepare, registry
from zsadlab.data.download import extract
from zsadlab.data.images import image_size, load_mask, load_mask_values
from zsadlab.data.layout import samples


def mvtec_raw(raw: Path, img, mask) -> None:
    img(raw / "bottle/train/good/000.png")
    img(raw / "bottle/test/good/000.png")
    img(raw / "bottle/test/broken/000.png")
    mask(raw / "bottle/ground_truth/broken/000_mask.png")


def isic_raw(raw: Path, img, mask) -> None:  # the raw folder is the class folder itself
    img(raw / "test/good/a.png")
    img(raw / "test/lesion/b.png")
    mask(raw / "ground_truth/lesion/b_mask.png")


def visa_raw(raw: Path, img, mask) -> None:
    img(raw / "candle/Data/Images/Normal/0000.JPG")
    img(raw / "candle/Data/Images/Normal/0001.JPG")
    img(raw / "candle/Data/Images/Anomaly/000.JPG")
    mask(raw / "candle/Data/Masks/Anomaly/000.png")
    (raw / "split_csv").mkdir()
    (raw / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
        "candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n"
    )


def btad_raw(raw: Path, img, mask) -> None:
    img(raw / "01/train/ok/0000.bmp")
    img(raw / "01/test/ok/0000.bmp")
    img(raw / "01/test/ko/0000.bmp")
    mask(raw / "01/ground_truth/ko/0000.png")


def sdd_raw(raw: Path, img, mask) -> None:
    img(raw / "kos01/Part0.jpg")
    mask(raw / "kos01/Part0_label.bmp", box=None)
    img(raw / "kos01/Part1.jpg")
    mask(raw / "kos01/Part1_label.bmp")


def dagm_raw(raw: Path, img, mask) -> None:
    img(raw / "Class1/Train/0001.PNG")
    img(raw / "Class1/Test/0002.PNG")
    img(raw / "Class1/Test/0003.PNG")
    mask(raw / "Class1/Test/Label/0003_label.PNG")


def polyp_raw(raw: Path, img, mask) -> None:
    img(raw / "images/1.png")
    mask(raw / "masks/1.png", high=230)  # any single non-zero value marks the defect


def tn3k_raw(raw: Path, img, mask) -> None:
    img(raw / "trainval-image/0000.jpg")
    mask(raw / "trainval-mask/0000.jpg")
    img(raw / "test-image/0001.jpg")
    mask(raw / "test-mask/0001.jpg")


def headct_raw(raw: Path, img, mask) -> None:
    img(raw / "head_ct/000.png", mode="L")
    img(raw / "head_ct/001.png", mode="L")
    (raw / "labels.csv").write_text("id, hemorrhage\n0,0\n1,1\n")


def yes_no_raw(raw: Path, img, mask) -> None:
    img(raw / "no/N1.jpg")
    img(raw / "yes/Y1.jpg")


def covid_raw(raw: Path, img, mask) -> None:
    img(raw / "Normal/images/Normal-1.png")
    img(raw / "COVID/images/COVID-1.png")
    img(raw / "Lung_Opacity/images/Lung_Opacity-1.png")  # ignored


def elpv_raw(raw: Path, img, mask) -> None:
    img(raw / "images/cell0001.png", mode="L")
    img(raw / "images/cell0002.png", mode="L")
    (raw / "labels.csv").write_text("images/cell0001.png  0.0  mono\nimages/cell0002.png  0.6666666666666666  poly\n")


def magnetic_tile_raw(raw: Path, img, mask) -> None:
    img(raw / "MT_Free/Imgs/exp1_num_1.jpg", mode="L")
    mask(raw / "MT_Free/Imgs/exp1_num_1.png", box=None)
    img(raw / "MT_Crack/Imgs/exp1_num_2.jpg", mode="L")
    mask(raw / "MT_Crack/Imgs/exp1_num_2.png")


def mpdd_metal_plate_raw(raw: Path, img, mask) -> None:
    for split, defective in (("train", True), ("val", False), ("test", True)):
        img(raw / f"metal_plate/{split}/images/{split}_00000.png")
        mask(raw / f"metal_plate/{split}/masks/{split}_00000.png", box=(1, 5, 1, 5) if defective else None)


# name -> (raw builder, classes, number of train images, test images, anomalous test images)
RAW_LAYOUTS = {
    "mvtec": (mvtec_raw, ["bottle"], 1, 2, 1),
    "mpdd": (mvtec_raw, ["bottle"], 1, 2, 1),
    "dtd_synthetic": (mvtec_raw, ["bottle"], 1, 2, 1),
    "isic": (isic_raw, ["raw"], 0, 2, 1),
    "visa": (visa_raw, ["candle"], 1, 2, 1),
    "btad": (btad_raw, ["01"], 1, 2, 1),
    "sdd": (sdd_raw, ["electrical_commutators"], 0, 2, 1),
    "dagm": (dagm_raw, ["class1"], 1, 2, 1),
    "clinicdb": (polyp_raw, ["colon"], 0, 1, 1),
    "colondb": (polyp_raw, ["colon"], 0, 1, 1),
    "kvasir": (polyp_raw, ["colon"], 0, 1, 1),
    "endo": (polyp_raw, ["colon"], 0, 1, 1),
    "tn3k": (tn3k_raw, ["thyroid"], 0, 1, 1),
    "tn3k_trainval": (tn3k_raw, ["thyroid"], 0, 1, 1),  # the other half of the same raw folder
    "headct": (headct_raw, ["head"], 0, 2, 1),
    "brainmri": (yes_no_raw, ["brain"], 0, 2, 1),
    "br35h": (yes_no_raw, ["brain"], 0, 2, 1),
    "covid19": (covid_raw, ["chest"], 0, 2, 1),
    "elpv": (elpv_raw, ["mono", "poly"], 0, 2, 1),
    "magnetic_tile": (magnetic_tile_raw, ["magnetic_tile"], 0, 2, 1),
    "mpdd_metal_plate": (mpdd_metal_plate_raw, ["metal_plate"], 1, 2, 2),
}


def test_every_real_registry_entry_has_a_hand_made_raw_layout_here():
    real = {name for name in registry.names() if not registry.entry(name).synthetic}
    assert set(RAW_LAYOUTS) == real


@pytest.mark.parametrize("name", sorted(RAW_LAYOUTS))
def test_converter_turns_the_official_raw_layout_into_the_common_one(name, tmp_path, write_image, write_mask):
    build, classes, n_train, n_test, n_anomalous = RAW_LAYOUTS[name]
    build(tmp_path / "raw", write_image, write_mask)
    root = prepare(name, raw=tmp_path / "raw", out=tmp_path / "out")
    assert (root / "meta.json").is_file()
    assert len(samples(root, "train")) == n_train
    masks = registry.entry(name).masks
    test = AnomalyDataset(root, "test", image_size=None, require_masks=masks)
    assert test.classes == classes
    assert (len(test), int(test.labels.sum())) == (n_test, n_anomalous)
    for item in test:
        assert (item["mask"] is not None) == masks
        if masks:
            assert bool(item["mask"].sum() > 0) == bool(item["label"])


def test_converted_masks_are_0_255_pngs_named_after_their_image(tmp_path, write_image, write_mask):
    polyp_raw(tmp_path / "raw", write_image, write_mask)
    root = prepare("kvasir", raw=tmp_path / "raw", out=tmp_path / "out")
    mask = root / "colon/ground_truth/polyp/1_mask.png"
    assert set(np.unique(load_mask_values(mask)).tolist()) == {0, 255}


def test_anomalous_raw_image_without_mask_is_named_in_the_error(tmp_path, write_image, write_mask):
    mvtec_raw(tmp_path / "raw", write_image, write_mask)
    write_image(tmp_path / "raw/bottle/test/broken/001.png")
    with pytest.raises(DatasetError, match="broken/001.png has no mask"):
        prepare("mvtec", raw=tmp_path / "raw", out=tmp_path / "out")


def test_raw_mask_of_another_size_is_kept_with_a_warning_naming_the_raw_image(tmp_path, write_image, write_mask):
    btad_raw(tmp_path / "raw", write_image, write_mask)
    write_mask(tmp_path / "raw/01/ground_truth/ko/0000.png", size=(5, 5), box=(1, 4, 1, 4))
    with pytest.warns(UserWarning, match=r"raw/01/test/ko/0000.bmp is 5x5 but the image is 16x12"):
        root = prepare("btad", raw=tmp_path / "raw", out=tmp_path / "out")
    assert load_mask(root / "01/ground_truth/defect/0000_mask.png").shape == (5, 5)


def test_unknown_raw_layout_shows_the_expected_one(tmp_path, write_image):
    write_image(tmp_path / "raw/whatever.png")
    with pytest.raises(DatasetError, match="expected raw layout: 01..03/train/ok"):
        prepare("btad", raw=tmp_path / "raw", out=tmp_path / "out")


def test_failed_conversion_leaves_no_folder_behind(tmp_path, write_image, write_mask):
    mvtec_raw(tmp_path / "raw", write_image, write_mask)
    write_image(tmp_path / "raw/bottle/test/broken/001.png")  # no mask: conversion fails midway
    with pytest.raises(DatasetError):
        prepare("mvtec", raw=tmp_path / "raw", out=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_prepared_folder_has_ordinary_permissions_not_a_private_temp_dir(tmp_path, write_image, write_mask):
    yes_no_raw(tmp_path / "raw", write_image, write_mask)
    root = prepare("br35h", raw=tmp_path / "raw", out=tmp_path / "out")
    assert root.stat().st_mode & 0o777 == (tmp_path / "raw").stat().st_mode & 0o777


def test_existing_output_is_kept_unless_overwrite(tmp_path, write_image, write_mask):
    yes_no_raw(tmp_path / "raw", write_image, write_mask)
    prepare("br35h", raw=tmp_path / "raw", out=tmp_path / "out")
    with pytest.raises(DatasetError, match="already exists"):
        prepare("br35h", raw=tmp_path / "raw", out=tmp_path / "out")
    prepare("br35h", raw=tmp_path / "raw", out=tmp_path / "out", overwrite=True)


def test_missing_raw_folder_says_how_to_get_the_data(tmp_path):
    with pytest.raises(DatasetError, match="kaggle.com/datasets/felipekitamura"):
        prepare("headct", raw=tmp_path / "nowhere", out=tmp_path / "out")


# ---------------------------------------------------------------- the real archives in ../shared/data
# Counts are those of /work/shared/data/README.md (the sources' own numbers).


def _defect_counts(dataset: AnomalyDataset) -> dict[str, int]:
    return dict(Counter(s.defect for s in dataset.samples))


@pytest.mark.realdata
def test_real_magnetic_tile_converts_952_normal_and_392_defective_images_with_masks(shared_data, tmp_path):
    raw = extract(shared_data / "magnetic_tile.tar", tmp_path / "raw")
    root = prepare("magnetic_tile", raw=raw, out=tmp_path / "out")
    ds = AnomalyDataset(root, "test", image_size=None, require_masks=True)
    assert ds.classes == ["magnetic_tile"]
    assert _defect_counts(ds) == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "good": 952, "uneven": 103}
    anomalous = [s for s in ds.samples if s.label]
    masks = [load_mask(s.mask_path) for s in anomalous]
    assert all(m.shape[::-1] == image_size(s.path) for m, s in zip(masks, anomalous))
    empty = [s.defect for s, m in zip(anomalous, masks) if not m.any()]
    assert empty == ["uneven"] * 4  # as the source ships them


@pytest.mark.realdata
def test_real_mpdd_metal_plate_keeps_test_split_and_moves_train_val_normals_to_train(shared_data, tmp_path):
    raw = extract(shared_data / "mpdd_metal_plate.tar", tmp_path / "raw")
    root = prepare("mpdd_metal_plate", raw=raw, out=tmp_path / "out")
    assert len(AnomalyDataset(root, "train")) == 41 + 13
    test = AnomalyDataset(root, "test", image_size=None, require_masks=True)
    assert _defect_counts(test) == {"defective": 81, "good": 26}
    assert all(load_mask(s.mask_path).any() for s in test.samples if s.label)
    item = test[0]
    assert item["image"].shape == (3, 512, 512) and item["mask"].shape == (512, 512)
