"""Specification of the converters: every registry entry turns its raw layout into the common one.

Each real dataset gets a tiny hand-made raw folder in its official layout; the two
real archives in ``../shared/data`` are converted from a subset of their members.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsadlab.data import AnomalyDataset, DatasetError, prepare, registry
from zsadlab.data.converters import inctrl_holdout
from zsadlab.data.download import extract
from zsadlab.data.images import image_size, load_mask, load_mask_values
from zsadlab.data.layout import samples


def mvtec_raw(raw: Path, img, mask) -> None:
    img(raw / "bottle/train/good/000.png")
    img(raw / "bottle/test/good/000.png")
    img(raw / "bottle/test/broken/000.png")
    mask(raw / "bottle/ground_truth/broken/000_mask.png")


def dtd_raw(raw: Path, img, mask) -> None:  # class folder names keep their case
    img(raw / "Woven_001/train/good/000.png")
    img(raw / "Woven_001/test/good/000.png")
    img(raw / "Woven_001/test/bad/000.png")
    mask(raw / "Woven_001/ground_truth/bad/000_mask.png")


def isic_raw(raw: Path, img, mask) -> None:
    img(raw / "skin/test/good/ISIC_0000001.jpg")
    img(raw / "skin/test/lesion/ISIC_0000003.jpg")
    mask(raw / "skin/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png")


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
    """Two 16x12 parts: Part0's defect (rows 2..5) touches bands 0 and 1; Part1 is clean: 4 normal bands."""
    img(raw / "kos01/Part0.jpg", mode="L")
    mask(raw / "kos01/Part0_label.bmp")
    img(raw / "kos01/Part1.jpg", mode="L")
    mask(raw / "kos01/Part1_label.bmp", box=None)


def dagm_raw(raw: Path, img, mask) -> None:
    img(raw / "Class1/Train/0001.PNG")
    img(raw / "Class1/Train/0004.PNG")  # defective training image: not used
    mask(raw / "Class1/Train/Label/0004_label.PNG")
    img(raw / "Class1/Test/0002.PNG")
    img(raw / "Class1/Test/0003.PNG")
    mask(raw / "Class1/Test/Label/0003_label.PNG")


def polyp_raw(raw: Path, img, mask) -> None:
    img(raw / "images/1.png")
    mask(raw / "masks/1.png", high=230)  # any single non-zero value marks the defect


def endo_raw(raw: Path, img, mask) -> None:
    img(raw / "images/a.jpg")
    img(raw / "images/b.jpg")
    mask(raw / "masks/a.jpg")
    mask(raw / "masks/b.jpg")


def tn3k_raw(raw: Path, img, mask) -> None:
    img(raw / "trainval-image/0000.jpg")
    mask(raw / "trainval-mask/0000.jpg")
    img(raw / "test-image/0001.jpg")
    mask(raw / "test-mask/0001.jpg")


def headct_raw(raw: Path, img, mask) -> None:
    """Kaggle layout (head_ct/head_ct/): ids 0..7, the last two hemorrhages: 6 normals -> 4 train, 2 test."""
    for i in range(8):
        img(raw / f"head_ct/head_ct/{i:03d}.png", mode="L")
    (raw / "labels.csv").write_text("id, hemorrhage\n" + "".join(f"{i},{int(i >= 6)}\n" for i in range(8)))


def brainmri_raw(raw: Path, img, mask) -> None:
    for name in ("no/N1.jpg", "no/N2.jpg", "no/N3.jpg", "no/N4.jpg", "yes/Y1.jpg"):
        img(raw / "brain_tumor_dataset" / name)


def br35h_raw(raw: Path, img, mask) -> None:
    img(raw / "no/no0.jpg")
    img(raw / "yes/y0.jpg")
    img(raw / "pred/pred0.jpg")  # the official br35.py marks every folder but no/ anomalous


def covid_raw(raw: Path, img, mask) -> None:
    """The official flat layout covid.py reads (the AnomalyCLIP README's Drive copy): NORMAL/ and the others."""
    img(raw / "NORMAL/NORMAL (1).png")
    img(raw / "COVID-19/COVID-19 (1).png")
    img(raw / "Viral Pneumonia/Viral Pneumonia (1).png")


def covid_kaggle_raw(raw: Path, img, mask) -> None:
    """Today's Kaggle archive: COVID-19_Radiography_Dataset/<class>/{images,masks} (lung masks, ignored)."""
    base = raw / "COVID-19_Radiography_Dataset"
    for folder, n in (("COVID", 2), ("Lung_Opacity", 1), ("Normal", 3), ("Viral Pneumonia", 1)):
        for i in range(1, n + 1):
            img(base / f"{folder}/images/{folder}-{i}.png")
            mask(base / f"{folder}/masks/{folder}-{i}.png")
    (base / "Normal.metadata.xlsx").write_bytes(b"not an image")


def elpv_raw(raw: Path, img, mask) -> None:
    """4 normal cells (-> 3 train, 1 test), one certain defect per type, two uncertain ones (dropped)."""
    lines = [(f"cell000{i}.png", p, t) for i, (p, t) in enumerate(
        [(0.0, "mono"), (0.0, "poly"), (0.0, "mono"), (0.0, "poly"), (1.0, "mono"), (1.0, "poly"),
         (0.3333333333333333, "mono"), (0.6666666666666666, "poly")]
    )]
    for name, _, _ in lines:
        img(raw / "images" / name, mode="L")
    (raw / "labels.csv").write_text("".join(f"images/{n}  {p}  {t}\n" for n, p, t in lines))


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
    "dtd_synthetic": (dtd_raw, ["Woven_001"], 1, 2, 1),
    "isic": (isic_raw, ["skin"], 0, 2, 1),
    "visa": (visa_raw, ["candle"], 1, 2, 1),
    "btad": (btad_raw, ["01"], 1, 2, 1),
    "sdd": (sdd_raw, ["electrical commutators"], 3, 3, 2),
    "sdd_inctrl": (sdd_raw, ["SDD"], 3, 3, 2),
    "dagm": (dagm_raw, ["Class1"], 1, 2, 1),
    "clinicdb": (polyp_raw, ["colon"], 0, 1, 1),
    "colondb": (polyp_raw, ["colon"], 0, 1, 1),
    "kvasir": (polyp_raw, ["colon"], 0, 1, 1),
    "endo": (endo_raw, ["colon"], 0, 2, 2),
    "tn3k": (tn3k_raw, ["thyroid"], 0, 1, 1),
    "tn3k_trainval": (tn3k_raw, ["thyroid"], 0, 1, 1),  # the other half of the same raw folder
    "headct": (headct_raw, ["brain"], 4, 4, 2),
    "headct_inctrl": (headct_raw, ["headct"], 4, 4, 2),
    "brainmri": (brainmri_raw, ["brain"], 0, 5, 1),
    "brainmri_inctrl": (brainmri_raw, ["brainmri"], 3, 2, 1),
    "br35h": (br35h_raw, ["brain"], 0, 3, 2),
    "covid19": (covid_raw, ["chest"], 0, 3, 2),
    "elpv": (elpv_raw, ["elpv"], 3, 3, 2),
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
    br35h_raw(tmp_path / "raw", write_image, write_mask)
    root = prepare("br35h", raw=tmp_path / "raw", out=tmp_path / "out")
    assert root.stat().st_mode & 0o777 == (tmp_path / "raw").stat().st_mode & 0o777


def test_existing_output_is_kept_unless_overwrite(tmp_path, write_image, write_mask):
    br35h_raw(tmp_path / "raw", write_image, write_mask)
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


# ---------------------------------------------------------------- the official protocols, one rule each


def test_inctrl_holdout_is_sklearns_split_keeping_25_percent_with_random_state_42():
    items = [f"n{i}" for i in range(10)]
    train, test = inctrl_holdout(items)
    assert (len(train), len(test)) == (7, 3)  # ceil(0.25 * 10) to test
    order = np.random.RandomState(42).permutation(10)  # what train_test_split draws
    assert test == [items[i] for i in order[:3]] and train == [items[i] for i in order[3:]]


def test_inctrl_training_pool_takes_train_and_test_normals_and_test_anomalies(tmp_path, write_image, write_mask):
    mvtec_raw(tmp_path / "raw", write_image, write_mask)
    write_image(tmp_path / "raw/bottle/train/good/001.png")
    root = prepare("mvtec", raw=tmp_path / "raw", out=tmp_path / "out")
    pool = AnomalyDataset(root, "inctrl_train", image_size=None)
    assert sorted(str(s.path.relative_to(root)) for s in pool.samples) == [
        "bottle/test/broken/000.png", "bottle/test/good/000.png", "bottle/train/good/000.png",
        "bottle/train/good/001.png",
    ]
    assert sorted(pool.labels.tolist()) == [0, 0, 0, 1]


def test_sdd_is_cut_into_thirds_named_like_the_official_converter(tmp_path, write_image, write_mask):
    sdd_raw(tmp_path / "raw", write_image, write_mask)
    root = prepare("sdd", raw=tmp_path / "raw", out=tmp_path / "out")
    every = samples(root, "train") + samples(root, "test")
    assert sorted(s.path.name for s in every) == [f"kos01_Part{p}_{i}.png" for p in (0, 1) for i in range(3)]
    defect = {s.path.name: s for s in every if s.label}
    assert sorted(defect) == ["kos01_Part0_0.png", "kos01_Part0_1.png"]
    assert all(image_size(s.path) == (16, 4) and load_mask(s.mask_path).any() for s in defect.values())


def test_dagm_tests_only_the_test_folder(tmp_path, write_image, write_mask):
    dagm_raw(tmp_path / "raw", write_image, write_mask)
    root = prepare("dagm", raw=tmp_path / "raw", out=tmp_path / "out")
    assert [s.path.name for s in samples(root, "test")] == ["0003.PNG", "0002.PNG"]  # defect first, then good
    assert [s.path.name for s in samples(root, "train")] == ["0001.PNG"]


def test_elpv_keeps_probability_0_and_1_only_with_the_cell_type_as_defect(tmp_path, write_image, write_mask):
    elpv_raw(tmp_path / "raw", write_image, write_mask)
    root = prepare("elpv", raw=tmp_path / "raw", out=tmp_path / "out")
    test = samples(root, "test")
    assert sorted(s.defect for s in test) == ["good", "mono", "poly"]
    assert {s.path.name for s in test if s.label} == {"cell0004.png", "cell0005.png"}


def test_covid_official_flat_layout_marks_every_folder_but_normal_anomalous_without_a_warning(
        tmp_path, write_image, write_mask, recwarn):
    covid_raw(tmp_path / "raw", write_image, write_mask)
    root = prepare("covid19", raw=tmp_path / "raw", out=tmp_path / "out")
    assert sorted((s.class_name, s.defect, s.label) for s in samples(root, "test")) == [
        ("chest", "COVID-19", 1), ("chest", "Viral Pneumonia", 1), ("chest", "good", 0)]
    assert not [w for w in recwarn if "COVID-19 Radiography" in str(w.message)]


def test_covid_kaggle_archive_is_read_with_one_warning_that_it_is_not_the_papers_test_set_with_its_counts(
        tmp_path, write_image, write_mask):
    covid_kaggle_raw(tmp_path / "raw", write_image, write_mask)
    with pytest.warns(UserWarning) as caught:
        root = prepare("covid19", raw=tmp_path / "raw", out=tmp_path / "out")
    messages = [str(w.message) for w in caught if "COVID-19 Radiography" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "not the paper's (3 normal, 4 anomalous: COVID 2, Lung_Opacity 1, Normal 3, Viral Pneumonia 1)" in messages[0]
    test = samples(root, "test")
    assert Counter((s.defect, s.label) for s in test) == {
        ("COVID", 1): 2, ("Lung_Opacity", 1): 1, ("Viral Pneumonia", 1): 1, ("good", 0): 3}
    assert not [s for s in test if "masks" in str(s.path)]  # lung masks are not images of the set


def test_headct_google_drive_archive_already_split_is_read_as_head_ct_py_reads_it(tmp_path, write_image):
    raw = tmp_path / "HeadCT_anomaly_detection"
    for name in ("good/000.png", "good/001.png", "good/002.png", "hemorrhage/100.png", "hemorrhage/101.png"):
        write_image(raw / "brain/test" / name, mode="L")
    (raw / "meta.json").write_text("{}")  # the official json may sit beside brain/
    for name, class_name in (("headct", "brain"), ("headct_inctrl", "headct")):
        root = prepare(name, raw=raw, out=tmp_path / name)
        assert sorted((s.class_name, s.defect, s.label, s.path.name) for s in samples(root, "test")) == [
            (class_name, "good", 0, "000.png"), (class_name, "good", 0, "001.png"), (class_name, "good", 0, "002.png"),
            (class_name, "hemorrhage", 1, "100.png"), (class_name, "hemorrhage", 1, "101.png")]
    headct_raw(tmp_path / "kaggle", write_image, None)  # the Kaggle labels.csv path is unchanged
    assert len(samples(prepare("headct", raw=tmp_path / "kaggle", out=tmp_path / "k"), "test")) == 4


def test_sdd_already_split_folder_of_the_anomalyclip_readme_is_read_as_sdd_py_reads_it(
        tmp_path, write_image, write_mask):
    base = tmp_path / "SDD/electrical_commutators"
    write_image(base / "train/good/kos01_Part0_1.png")
    write_image(base / "test/good/kos01_Part0_0.png")
    write_image(base / "test/defect/kos01_Part5_0.png")
    write_mask(base / "ground_truth/defect/kos01_Part5_0.png")
    root = prepare("sdd", raw=tmp_path / "SDD", out=tmp_path / "out")
    test = AnomalyDataset(root, "test", image_size=None, require_masks=True)
    assert test.classes == ["electrical commutators"] and sorted(test.labels.tolist()) == [0, 1]
    assert len(samples(root, "train")) == 1


def test_covid_folders_other_than_normal_are_anomalous_whatever_the_case(tmp_path, write_image, write_mask):
    for normal in ("NORMAL", "Normal", "normal"):
        raw = tmp_path / normal
        write_image(raw / f"{normal}/n.png")
        write_image(raw / "COVID/c.png")
        write_image(raw / "Viral Pneumonia/v.png")
        root = prepare("covid19", raw=raw, out=tmp_path / f"out_{normal}")
        assert sorted((s.defect, s.label) for s in samples(root, "test")) == [
            ("COVID", 1), ("Viral Pneumonia", 1), ("good", 0)
        ]


@pytest.mark.parametrize("header,sep", [("\ufeffid, hemorrhage", ","), ("id;hemorrhage", ";")])
def test_headct_labels_csv_with_a_bom_or_semicolons_is_read(header, sep, tmp_path, write_image):
    raw = tmp_path / "raw"
    for i in range(4):
        write_image(raw / f"head_ct/{i:03d}.png", mode="L")
    (raw / "labels.csv").write_text(header + "\n" + "".join(f"{i}{sep}{int(i == 3)}\n" for i in range(4)),
                                    encoding="utf-8")
    root = prepare("headct", raw=raw, out=tmp_path / "out")
    assert sorted(s.label for s in samples(root, "test")) == [0, 1]  # 1 of 3 normals held out, 1 hemorrhage


def test_headct_image_missing_from_the_raw_folder_is_skipped_with_a_warning_naming_it(tmp_path, write_image):
    headct_raw(tmp_path / "raw", write_image, None)
    (tmp_path / "raw/head_ct/head_ct/007.png").unlink()
    with pytest.warns(UserWarning, match=r"1 unreadable raw images were skipped:\n.*head_ct/007.png"):
        root = prepare("headct", raw=tmp_path / "raw", out=tmp_path / "out")
    assert sum(s.label for s in samples(root, "test")) == 1


def test_corrupt_and_zero_byte_raw_images_are_skipped_and_listed_not_copied(tmp_path, write_image, write_mask):
    mvtec_raw(tmp_path / "raw", write_image, write_mask)
    (tmp_path / "raw/bottle/train/good/empty.png").write_bytes(b"")
    cut = write_image(tmp_path / "raw/bottle/train/good/cut.png", size=(64, 64))
    cut.write_bytes(cut.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"2 unreadable raw images were skipped") as record:
        root = prepare("mvtec", raw=tmp_path / "raw", out=tmp_path / "out")
    message = str(record[0].message)
    assert "raw/bottle/train/good/cut.png" in message and "raw/bottle/train/good/empty.png" in message
    assert ".partial" not in message
    assert [s.path.name for s in samples(root, "train")] == ["000.png"]


def test_prepared_meta_json_reads_with_the_official_reader_rule(tmp_path, write_image, write_mask):
    """AnomalyCLIP dataset.py: items of meta[mode][cls], paths joined to the root, mask '' for normals."""
    isic_raw(tmp_path / "raw", write_image, write_mask)
    root = prepare("isic", raw=tmp_path / "raw", out=tmp_path / "out")
    meta = json.loads((root / "meta.json").read_text())
    assert list(meta["test"]) == ["skin"]  # the class name generate_class_info('ISBI') lists
    for item in meta["test"]["skin"]:
        assert (root / item["img_path"]).is_file() and item["cls_name"] == "skin"
        assert bool(item["mask_path"]) == bool(item["anomaly"])
        if item["anomaly"]:
            assert (np.array(Image.open(root / item["mask_path"]).convert("L")) > 0).any()


def test_headct_labels_csv_listing_an_id_twice_says_so(tmp_path, write_image):
    headct_raw(tmp_path / "raw", write_image, None)
    with (tmp_path / "raw/labels.csv").open("a") as handle:
        handle.write("3,1\n")
    with pytest.raises(DatasetError, match=r"labels.csv: id 3 is listed twice"):
        prepare("headct", raw=tmp_path / "raw", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
