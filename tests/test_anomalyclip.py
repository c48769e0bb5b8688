"""AnomalyCLIP composition: presets, per-class text, loss switches, checkpoint errors."""
import pytest
import torch

from zsadlab.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig, load_official_checkpoint, preset_config

TINY = AnomalyCLIPConfig(features=(2, 4, 6, 8), dpam_blocks=5, image_size=112)


def test_presets_are_the_paper_baselines():
    coop = preset_config("coop", TINY)
    assert coop.dpam_mode is None and coop.depth == 1 and not coop.object_agnostic
    assert coop.loss == "global"  # CoOp proper: class-name prompts, image-level cross-entropy only
    clip_cfg = preset_config("clip", TINY)
    assert clip_cfg.text_source == "plain"
    assert clip_cfg.global_ln_post and clip_cfg.features == (8,) and clip_cfg.dpam_mode is None


def test_clip_ac_differs_from_clip_only_in_its_prompts():
    clip_cfg, clip_ac = preset_config("clip", TINY), preset_config("clip_ac", TINY)
    assert clip_ac.text_source == "ensemble"
    assert clip_ac.replace(text_source="plain") == clip_cfg


def test_clip_and_clip_ac_give_different_maps(clip):
    x = torch.rand(2, 3, 112, 112)
    plain = AnomalyCLIP(clip, preset_config("clip", TINY)).predict(x, ["bottle", "bottle"])
    ensemble = AnomalyCLIP(clip, preset_config("clip_ac", TINY)).predict(x, ["bottle", "bottle"])
    assert not torch.allclose(plain[1], ensemble[1])


def test_default_config_is_the_published_one_block_24_and_lam_4():
    config = AnomalyCLIPConfig()
    assert config.features == (24,) and config.lam == 4 and (config.epochs, config.batch_size) == (15, 8)


def test_multilayer_preset_uses_four_distinct_blocks_and_is_never_the_default():
    assert preset_config("anomalyclip_multilayer", AnomalyCLIPConfig()).features == (6, 12, 18, 24)
    assert preset_config("anomalyclip_multilayer", TINY.replace(features=(8,))).features == (2, 4, 6, 8)
    assert preset_config("anomalyclip", AnomalyCLIPConfig()).features == (24,)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="DPAM mode"):
        AnomalyCLIPConfig(dpam_mode="vk")
    with pytest.raises(ValueError, match="loss setting"):
        AnomalyCLIPConfig(loss="pixels")


def test_object_aware_text_is_per_image(clip):
    model = AnomalyCLIP(clip, TINY.replace(object_agnostic=False))
    with torch.no_grad():
        text = model.text_features(["bottle", "screw", "bottle"])
    assert text.shape == (3, 2, 64) and torch.equal(text[0], text[2]) and not torch.equal(text[0], text[1])


@pytest.mark.parametrize("setting,uses", [("both", {"image", "pixel"}), ("global", {"image"}), ("local", {"pixel"})])
def test_total_loss_is_the_sum_of_the_enabled_terms(clip, setting, uses):
    model = AnomalyCLIP(clip, TINY.replace(loss=setting))
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 112, 112)
    masks[1, 30:60, 30:60] = 1
    terms = model.losses(x, masks, torch.tensor([0, 1]))
    assert terms["total"].item() == pytest.approx(sum(terms[k].item() for k in uses), rel=1e-6)
    assert terms["pixel"].item() == pytest.approx(
        4 * sum(terms[k].sum().item() for k in ("focal", "dice_anomalous", "dice_normal")), rel=1e-6)
    terms["total"].backward()
    assert all(p.grad is None for p in model.clip.parameters())


def test_checkpoint_from_another_architecture_is_named_with_the_fix(clip, tmp_path):
    small = AnomalyCLIP(clip, TINY.replace(n_ctx=4))
    torch.save({"prompt_learner": small.prompt_learner.state_dict()}, tmp_path / "epoch_1.pth")
    with pytest.raises(ValueError, match="n_ctx"):
        load_official_checkpoint(AnomalyCLIP(clip, TINY), tmp_path / "epoch_1.pth")
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="prompt_learner"):
        load_official_checkpoint(AnomalyCLIP(clip, TINY), tmp_path / "other.pth")


def test_a_coop_checkpoint_given_to_anomalyclip_and_the_reverse_says_which_it_is(clip, tmp_path):
    from zsadlab.errors import CheckpointError

    models = {name: AnomalyCLIP(clip, preset_config(name, TINY)) for name in ("anomalyclip", "coop")}
    for name, model in models.items():
        torch.save({"prompt_learner": model.prompt_learner.state_dict()}, tmp_path / f"{name}.pth")
    with pytest.raises(CheckpointError, match=r"coop.pth is a coop checkpoint .*--method coop"):
        load_official_checkpoint(models["anomalyclip"], tmp_path / "coop.pth")
    with pytest.raises(CheckpointError, match=r"anomalyclip.pth is an anomalyclip checkpoint .*--method anomalyclip"):
        load_official_checkpoint(models["coop"], tmp_path / "anomalyclip.pth")
    for name, model in models.items():
        load_official_checkpoint(model, tmp_path / f"{name}.pth")


def test_variant_switches_dpam_at_inference_without_touching_the_trained_model(clip):
    model = AnomalyCLIP(clip, TINY)
    view = model.variant(dpam_mode="qq")
    assert model.config.dpam_mode == "vv" and view.config.dpam_mode == "qq"
    assert view.prompt_learner is model.prompt_learner and view.clip is model.clip
    x = torch.rand(1, 3, 112, 112)
    assert not torch.allclose(model.predict(x, "bottle")[1], view.predict(x, "bottle")[1])
