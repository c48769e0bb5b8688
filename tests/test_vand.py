"""VAND (APRIL-GAN) composition: shapes, batch semantics, few-shot protocol, checkpoints, training recipe."""
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from zsadlab.data import AnomalyDataset, Sample, load_mask
from zsadlab.errors import CheckpointError
from zsadlab.vand import (
    VAND, MosaicItems, VANDConfig, VANDFewShot, batch_losses, config_for_dataset, item_random,
    load_official_checkpoint, make_optimizer, mosaic, normalise_fewshot_scores, official_backbone,
    save_epoch_checkpoint, save_official_checkpoint, training_plan,
)

TINY = VANDConfig(features=(2, 4, 6, 8), image_size=112)


@pytest.fixture(scope="module")
def model(clip):
    torch.manual_seed(0)
    return VAND(clip, TINY)


def images(n, size=112, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_defaults_are_the_paper_setup():
    config = VANDConfig()
    assert config.features == (6, 12, 18, 24) and config.memory_features == (6, 12, 18, 24)
    assert config.image_size == 518 and config.logit_scale == 100.0 and config.official_build
    assert config.batch_size == 8  # train.sh: --batch_size 8 in both runs
    assert config.epochs is None and config.aug_rate is None  # chosen by the training set: config_for_dataset


@pytest.mark.parametrize("size", [112, 140])
def test_predict_gives_a_score_and_a_full_size_map_per_image(clip, size):
    model = VAND(clip, TINY.replace(image_size=size))
    scores, maps = model.predict(images(2, size), ["bottle", "screw"])
    assert scores.shape == (2,) and maps.shape == (2, size, size)
    assert ((scores > 0) & (scores < 1)).all() and ((maps > 0) & (maps < 4)).all()
    _, fewshot_maps = model.predict(images(2, size), "bottle", references=images(3, size, seed=1))
    assert fewshot_maps.shape == (2, size, size)


def test_each_image_is_independent_of_its_batch_mates(model):
    x, refs = images(3), images(2, seed=1)
    names = ["bottle", "screw", "bottle"]
    scores, maps = model.predict(x, names)
    few_scores, few_maps = model.predict(x, names, references=refs)
    for i in range(3):
        s, m = model.predict(x[i:i + 1], names[i:i + 1])
        torch.testing.assert_close(s, scores[i:i + 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(m, maps[i:i + 1], rtol=0, atol=1e-5)
        fs, fm = model.predict(x[i:i + 1], names[i], references=refs)
        torch.testing.assert_close(fs, few_scores[i:i + 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(fm, few_maps[i:i + 1], rtol=0, atol=1e-5)


def test_the_few_shot_predictor_uses_each_image_class_references(model):
    x = images(3)
    refs = {"bottle": images(2, seed=1), "screw": images(1, seed=2)}
    predictor = VANDFewShot(model, refs)
    scores, maps = predictor.predict(x, ["bottle", "screw", "bottle"])
    for i, name in enumerate(["bottle", "screw", "bottle"]):
        s, m = model.predict(x[i:i + 1], name, references=refs[name])
        torch.testing.assert_close(scores[i:i + 1], s, rtol=0, atol=1e-6)
        torch.testing.assert_close(maps[i:i + 1], m, rtol=0, atol=1e-5)


def test_text_features_belong_to_each_image_class(model):
    text = model.text_features(["bottle", "screw", "bottle"])
    assert text.shape == (3, 2, 64) and torch.equal(text[0], text[2]) and not torch.equal(text[0], text[1])
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3, 2))


def test_a_reference_identical_to_the_query_adds_nothing_to_the_map(model):
    x = images(1)
    _, zero_shot = model.predict(x, "bottle")
    _, few_shot = model.predict(x, "bottle", references=x.clone())
    torch.testing.assert_close(few_shot, zero_shot, rtol=0, atol=1e-4)
    _, other = model.predict(x, "bottle", references=images(1, seed=5))
    assert (other - zero_shot).min() > 0


def test_reference_memory_is_reused_until_the_references_change(model):
    refs = images(2, seed=1)
    first = model.reference_memory(refs)
    assert model.reference_memory(refs) is first
    assert first[0].shape == (2 * 64, 128)
    refs.mul_(2)
    assert model.reference_memory(refs) is not first


def test_fewshot_scores_mix_text_probability_with_map_maxima_normalised_over_the_class():
    scores = np.array([0.2, 0.4, 0.6])
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[:, 0, 0] = [1.0, 3.0, 2.0]
    np.testing.assert_allclose(normalise_fewshot_scores(scores, maps), [0.1, 0.7, 0.55])
    np.testing.assert_allclose(normalise_fewshot_scores(torch.tensor(scores), torch.tensor([1.0, 3.0, 2.0])),
                               [0.1, 0.7, 0.55])
    np.testing.assert_allclose(normalise_fewshot_scores(scores[:1], maps[:1]), [0.1])  # no spread: 0


def test_losses_are_focal_plus_abnormal_dice_per_layer_and_train_only_the_linear_layers(clip):
    model = VAND(clip, TINY)
    masks = torch.zeros(2, 112, 112)
    masks[1, 30:60, 30:60] = 1
    terms = model.losses(images(2), masks, torch.tensor([0, 1]), ["bottle", "screw"])
    assert set(terms) == {"focal", "dice", "total"} and terms["focal"].shape == (4,)
    assert terms["total"].item() == pytest.approx((terms["focal"] + terms["dice"]).sum().item(), rel=1e-6)
    terms["total"].backward()
    assert all(p.grad is None for p in model.clip.parameters())
    assert all(p.grad is not None for p in model.trainable_linearlayer.parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        f"trainable_linearlayer.fc.{i}.{p}" for i in range(4) for p in ("weight", "bias")]


def test_the_recipe_is_adam_on_the_linear_layers_with_the_official_settings(clip, tmp_path):
    model = VAND(clip, TINY)
    optimizer = make_optimizer(model)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam) and group["lr"] == 1e-3 and group["betas"] == (0.5, 0.999)
    assert {id(p) for p in group["params"]} == {id(p) for p in model.trainable_linearlayer.parameters()}
    masks = torch.zeros(2, 112, 112)
    batch = {"image": images(2), "mask": masks, "label": torch.tensor([0, 0]), "class_name": ["bottle", "screw"]}
    terms = batch_losses(model, batch)
    terms["total"].backward()
    optimizer.step()
    assert save_epoch_checkpoint(model, tmp_path, 3) == tmp_path / "epoch_3.pth"


def test_the_non_native_official_build_never_changes_the_given_clip(clip):
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    rebuilt = official_backbone(clip, 140)
    assert official_backbone(clip, 112) is clip
    assert all(torch.equal(before[k], v) for k, v in clip.state_dict().items())
    assert type(clip.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert rebuilt.visual.positional_embedding.shape == (101, 128)
    assert rebuilt.token_embedding.weight is clip.token_embedding.weight  # shared, not copied


def test_without_the_official_build_the_given_clip_runs_at_any_size(clip):
    model = VAND(clip, TINY.replace(image_size=140, official_build=False))
    assert model.clip is clip
    scores, maps = model.predict(images(1, 140), "bottle")
    assert scores.shape == (1,) and maps.shape == (1, 140, 140)


def test_checkpoint_round_trip_restores_the_predictions(clip, model, tmp_path):
    path = save_official_checkpoint(model, tmp_path / "epoch_15.pth")
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"trainable_linearlayer"}
    assert set(saved["trainable_linearlayer"]) == {f"fc.{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    torch.manual_seed(123)
    other = load_official_checkpoint(VAND(clip, TINY), path)
    x = images(2)
    for a, b in zip(model.predict(x, "bottle"), other.predict(x, "bottle")):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def one_line_error(call, *patterns):
    with pytest.raises(CheckpointError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and all(p in message for p in patterns), message


def test_wrong_checkpoints_are_refused_in_one_line_naming_the_file(clip, tmp_path):
    three_layers = VAND(clip, TINY.replace(features=(2, 4, 6)))
    wrong_count = save_official_checkpoint(three_layers, tmp_path / "three.pth")
    one_line_error(lambda: load_official_checkpoint(VAND(clip, TINY), wrong_count), str(wrong_count), "features")
    state = {k: v[..., :10] if k.endswith("weight") else v
             for k, v in VAND(clip, TINY).trainable_linearlayer.state_dict().items()}
    torch.save({"trainable_linearlayer": state}, tmp_path / "narrow.pth")
    one_line_error(lambda: load_official_checkpoint(VAND(clip, TINY), tmp_path / "narrow.pth"),
                   "narrow.pth", "size mismatch")
    torch.save({"prompt_learner": {}}, tmp_path / "anomalyclip.pth")
    one_line_error(lambda: load_official_checkpoint(VAND(clip, TINY), tmp_path / "anomalyclip.pth"),
                   "anomalyclip.pth", "trainable_linearlayer")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    one_line_error(lambda: load_official_checkpoint(VAND(clip, TINY), tmp_path / "garbage.pth"), "garbage.pth")


def test_the_checkpoint_loaders_share_one_helper_and_refuse_each_others_files(clip, tmp_path):
    from zsadlab import anomalyclip
    from zsadlab.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig

    vand_file = save_official_checkpoint(VAND(clip, TINY), tmp_path / "vand.pth")
    tiny = AnomalyCLIPConfig(features=(8,), dpam_blocks=5, image_size=112)
    one_line_error(lambda: anomalyclip.load_official_checkpoint(AnomalyCLIP(clip, tiny), vand_file),
                   "vand.pth", "prompt_learner")


# --- the official recipe of the training set and the mosaic (train.sh, dataset.py combine_img) -----------------


class Split:
    """A stand-in for a training split: ``samples`` and a length, enough for the training plan."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)


def split_of(count, class_name="c", defects=("good",)):
    return Split([Sample(Path(f"{class_name}/test/{defects[i % len(defects)]}/{i:04d}.png"), None, 0, class_name,
                         defects[i % len(defects)]) for i in range(count)])


def planner(aug_rate):
    return SimpleNamespace(config=VANDConfig(aug_rate=aug_rate))


def test_the_training_set_chooses_the_run_mvtec_3_epochs_with_mosaics_at_0_2_any_other_15_without(
        marked_toy_set, synthetic_industrial_root):
    def recipe(root, config=VANDConfig()):
        chosen = config_for_dataset(config, AnomalyDataset(root, "test"))
        return chosen.epochs, chosen.batch_size, chosen.aug_rate

    assert recipe(marked_toy_set("mvtec")) == (3, 8, 0.2)  # train.sh: the MVTec AD run
    assert recipe(marked_toy_set("visa")) == (15, 8, 0.0)  # train.sh: the VisA run
    assert recipe(synthetic_industrial_root) == (15, 8, 0.0)  # every other set, synthetic ones included
    assert recipe(marked_toy_set("mvtec"), VANDConfig(epochs=1)) == (1, 8, 0.2)  # a field given is kept
    unmarked = marked_toy_set("mvtec")
    (unmarked / ".zsadlab-prepared").unlink()
    assert recipe(unmarked) == (3, 8, 0.2)  # an official folder named after the registry name
    assert recipe(unmarked.rename(unmarked.with_name("my_parts"))) == (15, 8, 0.0)


@pytest.mark.parametrize("images, steps", [(1725, 216), (2162, 271)])  # MVTec AD, VisA test splits (the training sets)
def test_an_epoch_has_one_step_per_8_images_of_the_training_set(images, steps):
    plan = training_plan(planner(0.2), split_of(images), VANDConfig().batch_size, seed=111)
    assert len(plan) == steps and all(len(batch) == 8 for batch in plan[:-1])
    assert sorted(index for batch in plan for index, _ in batch) == list(range(images))  # each image once


def official_draw(root, class_name, rng, aug_rate):
    """dataset.py's MVTecDataset.__getitem__ + combine_img, literally, over a sorted os.listdir."""
    if not rng.random() < aug_rate:
        return []
    test, files = root / class_name / "test", []
    for _ in range(4):
        defect = rng.choice(sorted(os.listdir(test)))
        files.append(test / defect / rng.choice(sorted(os.listdir(test / defect))))
    return files


def test_each_item_is_drawn_as_the_official_combine_img_from_its_own_seeded_stream(marked_toy_set):
    root = marked_toy_set("mvtec")
    data = AnomalyDataset(root, "test", require_masks=True)
    drawn = 0
    for seed in range(20):
        for batch in training_plan(planner(0.2), data, 8, seed):
            for index, tiles in batch:
                sample = data.samples[index]
                expected = official_draw(root, sample.class_name, item_random(seed, index), 0.2)
                assert [data.samples[t].path for t in tiles] == expected
                assert all(data.samples[t].class_name == sample.class_name for t in tiles)  # same class only
                drawn += bool(tiles)
    assert 0 < drawn < 20 * len(data)


def test_mosaics_are_drawn_with_the_rate_and_the_same_for_any_batch_size_rank_or_worker():
    split = split_of(2000, defects=("good", "crack", "hole"))
    keys = {key for batch in training_plan(planner(0.2), split, 8, seed=3) for key in batch}
    assert abs(sum(bool(tiles) for _, tiles in keys) / len(keys) - 0.2) < 0.04  # binomial: 3 sd = 0.027
    assert keys == {key for batch in training_plan(planner(0.2), split, 2, seed=3) for key in batch}
    assert keys != {key for batch in training_plan(planner(0.2), split, 8, seed=4) for key in batch}
    for rate, share in ((0.0, 0), (None, 0), (1.0, 1)):
        plan = training_plan(planner(rate), split, 8, seed=3)
        assert {bool(tiles) for batch in plan for _, tiles in batch} == {bool(share)}


def pasted(tiles, cell):
    """combine_img's canvas, literally: Image.new of twice the first tile's size, Image.paste row by row."""
    height, width = cell
    canvas = Image.new("L", (2 * width, 2 * height))
    for i, tile in enumerate(tiles):
        canvas.paste(Image.fromarray(tile), ((i % 2) * width, (i // 2) * height))
    return np.asarray(canvas)


@pytest.mark.parametrize("sizes", [[(4, 6)] * 4, [(5, 7), (4, 6), (4, 6), (4, 6)], [(4, 6), (4, 6), (3, 2), (6, 9)]])
def test_a_mosaic_tiles_four_images_row_by_row_at_the_first_ones_size_as_image_paste(sizes):
    tiles = [np.full(size, 40 * (i + 1), np.uint8) for i, size in enumerate(sizes)]
    np.testing.assert_array_equal(mosaic(tiles, sizes[0]), pasted(tiles, sizes[0]))
    if len(set(sizes)) == 1:
        np.testing.assert_array_equal(mosaic(tiles, sizes[0]), np.block([tiles[:2], tiles[2:]]))


def test_a_mosaic_item_is_the_tiled_images_and_masks_through_the_datasets_transform(marked_toy_set):
    root = marked_toy_set("mvtec")
    data = AnomalyDataset(root, "test", image_size=16, require_masks=True)  # a mosaic of 8 px tiles: no resize
    native = AnomalyDataset(root, "test", image_size=8)
    crack = next(i for i, s in enumerate(data.samples) if s.defect == "crack" and s.class_name == "a")
    good = next(i for i, s in enumerate(data.samples) if s.defect == "good" and s.class_name == "a")
    tiles = (crack, good, good, crack)
    item = MosaicItems(data)[(good, tiles)]
    parts = [native[t] for t in tiles]
    image = torch.cat([torch.cat([parts[0]["image"], parts[1]["image"]], 2),
                       torch.cat([parts[2]["image"], parts[3]["image"]], 2)], 1)  # [3, 16, 16]
    masks = [load_mask(data.samples[t].mask_path) if data.samples[t].mask_path else np.zeros((8, 8), np.uint8)
             for t in tiles]
    torch.testing.assert_close(item["image"], image, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(item["mask"].numpy(), np.block([masks[:2], masks[2:]]))
    assert item["mask"][:8, :8].sum() > 0 and item["mask"][:8, 8:].sum() == 0  # the defect's mask in its tile
    assert item["class_name"] == "a" and item["path"] == str(data.samples[good].path)  # the drawn item's, as official
    assert torch.equal(MosaicItems(data)[(good, ())]["image"], data[good]["image"])  # no tiles: the item itself
