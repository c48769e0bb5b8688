"""Specification of AnomalyDataset and collate (the API every method and notebook uses)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from torchvision import transforms

from zsadlab.data import AnomalyDataset, DatasetError, Sample, collate, prepare
from zsadlab.data.dataset import image_tensor, resized_rgb


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


def official_mask(path: Path, size: int) -> torch.Tensor:
    """AnomalyCLIP's mask rule written with torchvision (dataset.py, utils.py get_transform, test.py)."""
    binary = np.array(Image.open(path).convert("L")) > 0
    pil = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
    target = transforms.Compose([transforms.Resize((size, size)), transforms.CenterCrop(size), transforms.ToTensor()])
    return (target(pil)[0] > 0.5).float()  # [S, S]


@pytest.mark.parametrize("size", [112, 518])
def test_mask_with_labels_0_1_2_keeps_both_regions_and_equals_the_official_rule(size, tmp_path, write_image):
    labels = np.zeros((90, 130), np.uint8)  # two defects labelled 1 and 2, thin enough to test the resize rule
    labels[10:40, 5:9], labels[50:53, 60:120] = 1, 2
    raw = tmp_path / "raw"
    write_image(raw / "part/test/good/000.png", size=(130, 90))
    write_image(raw / "part/test/two/000.png", size=(130, 90))
    (raw / "part/ground_truth/two").mkdir(parents=True)
    Image.fromarray(labels).save(raw / "part/ground_truth/two/000_mask.png")
    root = prepare("mvtec", raw=raw, out=tmp_path / "out")
    item = next(it for it in AnomalyDataset(root, "test", image_size=size) if it["label"] == 1)
    expected = official_mask(raw / "part/ground_truth/two/000_mask.png", size)
    torch.testing.assert_close(item["mask"], expected, rtol=0, atol=0)
    top, bottom = expected[: size * 45 // 90], expected[size * 45 // 90 :]
    assert top.sum() > 0 and bottom.sum() > 0  # both regions survive


def test_mask_of_another_size_is_resized_like_the_official_code_with_one_warning(root, write_mask):
    path = write_mask(root / "bottle/ground_truth/crack/000_mask.png", size=(10, 10), box=(2, 8, 2, 8))
    write_mask(root / "cable/ground_truth/crack/000_mask.png", size=(10, 10))
    ds = AnomalyDataset(root, "test", image_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = [ds[i]["mask"] for i in range(len(ds))]
    assert len([w for w in caught if "10x10 but its image" in str(w.message)]) == 1
    torch.testing.assert_close(masks[0], official_mask(path, 8), rtol=0, atol=0)
    native = AnomalyDataset(root, "test", image_size=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert native[0]["mask"].shape == (12, 16)


def test_image_squash_is_the_anomalyclip_transform_and_crop_is_the_inctrl_one(tmp_path, write_image):
    path = write_image(tmp_path / "r/cls/test/good/000.png", size=(320, 200))
    norm = transforms.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    bicubic = transforms.InterpolationMode.BICUBIC
    anomalyclip = transforms.Compose(
        [transforms.Resize((240, 240), bicubic), transforms.CenterCrop(240), transforms.ToTensor(), norm]
    )
    inctrl = transforms.Compose([transforms.Resize(240, bicubic), transforms.CenterCrop(240), transforms.ToTensor(), norm])
    with Image.open(path) as img:
        expected = {"squash": anomalyclip(img), "shorter_side_center_crop": inctrl(img)}
    for mode, tensor in expected.items():
        got = AnomalyDataset(tmp_path / "r", "test", image_size=240, resize=mode)[0]["image"]
        torch.testing.assert_close(got, tensor, atol=1e-5, rtol=0)
        torch.testing.assert_close(image_tensor(path, 240, mode), tensor, atol=1e-5, rtol=0)
    assert not torch.allclose(expected["squash"], expected["shorter_side_center_crop"], atol=0.1)


@pytest.mark.parametrize("size", [(200, 320), (241, 240), (333, 97)])
def test_shorter_side_center_crop_matches_torchvision_for_tall_and_odd_sizes(size):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    crop = transforms.Compose([transforms.Resize(240, transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(240)])
    assert np.array_equal(resized_rgb(np.array(img), 240, "shorter_side_center_crop"), np.array(crop(img)))


def test_unknown_resize_mode_is_refused_at_construction(root):
    with pytest.raises(DatasetError, match="unknown resize mode 'stretch'"):
        AnomalyDataset(root, "test", resize="stretch")


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


# --- budgets: a seeded, stratified subset per class ---------------------------------------------


@pytest.fixture
def budget_root(tmp_path, write_image, write_mask):
    """bottle: 6 normal + 4 anomalous test images, 5 train images; cable: 3 normal + 1 anomalous."""
    root = tmp_path / "budget"
    for cls, normal, anomalous in (("bottle", 6, 4), ("cable", 3, 1)):
        for i in range(normal):
            write_image(root / f"{cls}/test/good/{i:03d}.png")
            write_image(root / f"{cls}/train/good/{i:03d}.png")
        for i in range(anomalous):
            write_image(root / f"{cls}/test/crack/{i:03d}.png")
            write_mask(root / f"{cls}/ground_truth/crack/{i:03d}_mask.png")
    write_image(root / "bottle/train/good/100.png")
    return root


def counts(ds) -> dict[tuple[str, int], int]:
    """``{(class, label): images}`` of a dataset."""
    found: dict[tuple[str, int], int] = {}
    for s in ds.samples:
        found[s.class_name, s.label] = found.get((s.class_name, s.label), 0) + 1
    return found


def test_budget_keeps_at_most_n_images_per_class_with_the_anomalous_share(budget_root):
    small = AnomalyDataset(budget_root, "test").budget(max_images_per_class=5)
    # bottle: 4/10 anomalous -> 2 of 5; cable has 4 images, under the budget: all kept
    assert counts(small) == {("bottle", 0): 3, ("bottle", 1): 2, ("cable", 0): 3, ("cable", 1): 1}


def test_budget_keeps_both_labels_even_when_the_share_rounds_to_zero(budget_root):
    small = AnomalyDataset(budget_root, "test").budget(max_images_per_class=2)
    assert counts(small) == {("bottle", 0): 1, ("bottle", 1): 1, ("cable", 0): 1, ("cable", 1): 1}


def test_budget_of_one_image_cannot_keep_both_labels_and_says_so(budget_root):
    with pytest.raises(DatasetError, match="at least 2"):
        AnomalyDataset(budget_root, "test").budget(max_images_per_class=1)
    with pytest.raises(DatasetError, match="at least 1"):
        AnomalyDataset(budget_root, "test").budget(max_images_per_class=0)


def test_budget_restricts_classes_and_none_keeps_everything(budget_root):
    full = AnomalyDataset(budget_root, "test")
    assert full.budget().samples == full.samples
    cable = full.budget(classes=["cable"])
    assert cable.classes == ["cable"] and len(cable) == 4 and len(full) == 14
    with pytest.raises(DatasetError, match="available"):
        full.budget(classes=["screw"])


def test_budget_is_deterministic_for_a_seed_and_changes_with_it(budget_root):
    full = AnomalyDataset(budget_root, "test")
    draws = {seed: [s.path for s in full.budget(max_images_per_class=4, seed=seed).samples] for seed in range(6)}
    assert draws[0] == [s.path for s in full.budget(max_images_per_class=4, seed=0).samples]
    assert len({tuple(d) for d in draws.values()}) > 1


def test_budget_does_not_depend_on_file_order(budget_root):
    full = AnomalyDataset(budget_root, "test")
    shuffled = full.excluding([])
    shuffled.samples = full.samples[::-1]
    for seed in range(3):
        kept = {s.path for s in full.budget(max_images_per_class=4, seed=seed).samples}
        assert kept == {s.path for s in shuffled.budget(max_images_per_class=4, seed=seed).samples}


def test_budget_works_on_training_splits(budget_root):
    train = AnomalyDataset(budget_root, "train").budget(max_images_per_class=2)
    assert counts(train) == {("bottle", 0): 2, ("cable", 0): 2}
    pool = AnomalyDataset(budget_root, "inctrl_train").budget(max_images_per_class=4)
    # the pool holds both splits: bottle 13 normal + 4 anomalous -> 1 of 4; cable 6 + 1 -> 1 of 4
    assert counts(pool) == {("bottle", 0): 3, ("bottle", 1): 1, ("cable", 0): 3, ("cable", 1): 1}


def test_an_image_of_extreme_aspect_ratio_is_resized_without_a_huge_intermediate(tmp_path, write_image, monkeypatch):
    import subprocess
    import sys

    from zsadlab.data import dataset as dataset_module
    from zsadlab.data.dataset import image_tensor

    path = write_image(tmp_path / "line.png", size=(30000, 1))
    code = ("import resource, sys; from zsadlab.data.dataset import image_tensor\n"
            "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "before = peak(); t = image_tensor(sys.argv[1], 240, 'shorter_side_center_crop')\n"
            "print(tuple(t.shape), peak() - before)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-500:]
    shape, peak_kib = done.stdout.rsplit(" ", 1)
    assert shape == "(3, 240, 240)" and int(peak_kib) < 2**18  # < 256 MiB more; the 7.2e6 x 240 intermediate is 5 GB
    ordinary = write_image(tmp_path / "wide.png", size=(300, 37))
    exact = image_tensor(ordinary, 64, "shorter_side_center_crop")
    monkeypatch.setattr(dataset_module, "MAX_INTERMEDIATE_PIXELS", 0)  # the bounded path on an ordinary image
    bounded = image_tensor(ordinary, 64, "shorter_side_center_crop")
    assert (bounded - exact).abs().max() <= 2 / 255 / 0.26  # at most a rounding step of uint8, normalised
