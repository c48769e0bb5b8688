"""VAND (APRIL-GAN) composition: shapes, batch semantics, few-shot protocol, checkpoints."""
import numpy as np
import pytest
import torch

from zsadlab.errors import CheckpointError
from zsadlab.vand import (
    VAND, VANDFewShot, VANDConfig, batch_losses, load_official_checkpoint, make_optimizer,
    normalise_fewshot_scores, official_backbone, save_epoch_checkpoint, save_official_checkpoint,
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
    assert (config.epochs, config.batch_size) == (15, 64)  # train.sh, VisA run (for the MVTec AD rows)


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
