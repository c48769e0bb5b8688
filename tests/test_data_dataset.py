"""Specification of AnomalyDataset and collate (the API every method and notebook uses)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from zsadlab.data import AnomalyDataset, DatasetError, Sample, collate


@pytest.fixture
def root(tmp_path, write_image, write_mask):
    """Two classes in the common layout; masks 0/255, images 16x12."""
    root = tmp_path / "root"
    for cls in ("bottle", "cable"):
        write_image(root / f"{cls}/train/good/000.png")
        write_image(root / f"{cls}/test/good/000.png")
        write_image(root / f"{cls}/test/crack/000.png")
        write_mask(root / f"{cls}/ground_truth/crack/000_mask.png")
    return root


def test_item_has_normalised_square_image_binary_mask_and_metadata(root):
    item = AnomalyDataset(root, "test", image_size=8)[0]
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (8, 8) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["mask"].sum() > 0
    assert (item["label"], item["class_name"], item["defect"]) == (1, "bottle", "crack")
    assert item["path"].endswith("bottle/test/crack/000.png")


def test_image_is_bicubic_resized_then_normalised_with_openai_clip_statistics(root):
    item = AnomalyDataset(root, "test", image_size=8)[0]
    raw = Image.open(root / "bottle/test/crack/000.png").convert("RGB").resize((8, 8), Image.BICUBIC)
    expected = (torch.tensor(np.array(raw)).permute(2, 0, 1) / 255 - torch.tensor(OPENAI_DATASET_MEAN)[:, None, None])
    expected = expected / torch.tensor(OPENAI_DATASET_STD)[:, None, None]
    torch.testing.assert_close(item["image"], expected)


def test_normal_image_of_a_masked_dataset_has_an_all_zero_mask(root):
    ds = AnomalyDataset(root, "test", image_size=8)
    normal = next(ds[i] for i in range(len(ds)) if ds[i]["label"] == 0)
    assert normal["mask"].sum() == 0


def test_image_size_none_keeps_the_native_size(root):
    item = AnomalyDataset(root, "test", image_size=None)[0]
    assert item["image"].shape == (3, 12, 16) and item["mask"].shape == (12, 16)


def test_image_level_dataset_gives_mask_none_and_collate_fills_zeros(root):
    import shutil

    for cls in ("bottle", "cable"):
        shutil.rmtree(root / cls / "ground_truth")
    ds = AnomalyDataset(root, "test", image_size=8)
    assert ds[0]["mask"] is None
    batch = collate([ds[0], ds[1]])
    assert batch["mask"].shape == (2, 8, 8) and batch["mask"].sum() == 0
    assert batch["has_mask"].tolist() == [False, False]


def test_collate_stacks_items_into_a_batch(root):
    ds = AnomalyDataset(root, "test", image_size=8)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (4, 3, 8, 8) and batch["mask"].shape == (4, 8, 8)
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == ds.labels.tolist()
    assert batch["has_mask"].all()
    assert batch["class_name"] == ["bottle", "bottle", "cable", "cable"]


def test_classes_filter_subset_samples_and_labels(root):
    ds = AnomalyDataset(root, "test")
    assert ds.classes == ["bottle", "cable"] and len(ds) == 4
    assert isinstance(ds.samples[0], Sample)
    cable = ds.subset("cable")
    assert cable.classes == ["cable"] and len(cable) == 2 and len(ds) == 4
    assert AnomalyDataset(root, "test", classes=["cable"]).samples == cable.samples
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [1, 0, 1, 0]


def test_train_split_holds_only_normal_images(root):
    assert AnomalyDataset(root, "train").labels.tolist() == [0, 0]


def test_unknown_class_lists_the_available_ones(root):
    with pytest.raises(DatasetError, match="available"):
        AnomalyDataset(root, "test", classes=["screw"])


def test_empty_split_is_a_clear_error(root, write_image):
    import shutil

    for cls in ("bottle", "cable"):
        shutil.rmtree(root / cls / "train")
    with pytest.raises(DatasetError, match="no train images"):
        AnomalyDataset(root, "train")


def test_anomalous_image_without_mask_fails_when_masks_are_required(root):
    (root / "cable/ground_truth/crack/000_mask.png").unlink()
    assert AnomalyDataset(root, "test").subset("cable")[0]["mask"] is None  # tolerated by default
    with pytest.raises(DatasetError, match="cable/test/crack/000.png"):
        AnomalyDataset(root, "test", require_masks=True)


def test_mask_of_another_size_names_both_files(root, write_mask):
    write_mask(root / "bottle/ground_truth/crack/000_mask.png", size=(10, 10))
    with pytest.raises(DatasetError, match="000_mask.png.*10x10.*16x12"):
        AnomalyDataset(root, "test")[0]


def test_non_binary_masks_are_thresholded_at_127_with_one_warning_per_dataset(root):
    soft = np.zeros((12, 16), np.uint8)
    soft[:, :8], soft[0, 8] = 200, 100  # two non-zero levels: not binary
    Image.fromarray(soft).save(root / "bottle/ground_truth/crack/000_mask.png")
    Image.fromarray(soft // 2).save(root / "cable/ground_truth/crack/000_mask.png")  # 100 and 50
    ds = AnomalyDataset(root, "test", image_size=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = [ds[i]["mask"] for i in range(len(ds))]
    assert len([w for w in caught if "not binary" in str(w.message)]) == 1
    assert masks[0].sum() == 12 * 8  # 200 > 127, 100 is not
    assert masks[2].sum() == 0  # nothing above 127


def test_truncated_image_error_names_the_file(root):
    path = root / "cable/test/good/000.png"
    path.write_bytes(path.read_bytes()[:60])
    ds = AnomalyDataset(root, "test")
    with pytest.raises(DatasetError, match="cable/test/good/000.png"):
        ds[3]


def test_rgba_palette_and_16_bit_images_are_converted(root):
    Image.new("RGBA", (16, 12), (1, 2, 3, 4)).save(root / "bottle/test/good/000.png")
    Image.fromarray(np.full((12, 16), 4000, np.uint16)).save(root / "cable/test/good/000.png")
    Image.new("P", (16, 12)).save(root / "cable/train/good/000.png")
    assert AnomalyDataset(root, "test", image_size=None)[1]["image"].shape == (3, 12, 16)
    assert AnomalyDataset(root, "test", image_size=None)[3]["image"].shape == (3, 12, 16)
    assert AnomalyDataset(root, "train", image_size=None)[1]["image"].shape == (3, 12, 16)


def test_dataloader_batches_a_synthetic_set(synthetic_industrial_root):
    ds = AnomalyDataset(synthetic_industrial_root, "test", image_size=32, require_masks=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate)))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["mask"].shape == (5, 32, 32)
