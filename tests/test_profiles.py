"""Profiles choose backbones and sizes; ``auto`` falls back to smoke with a one-time banner."""
from dataclasses import fields as dataclasses_fields

import pytest

from zsadlab.backbone import Backbone
from zsadlab.profiles import PROFILES, get_profile


def test_full_profile_is_the_published_setup_block_24_with_lam_4():
    full = PROFILES["full"]
    backbone, config = full.backbone("anomalyclip"), full.config("anomalyclip")
    assert (backbone.name, backbone.pretrained) == ("ViT-L-14-336", "openai")
    assert config.image_size == 518 and config.features == (24,) and config.lam == 4
    assert config.dpam_blocks == 19 and (config.epochs, config.batch_size) == (15, 8)


def test_full_profile_trains_inctrl_with_its_own_recipe_not_anomalyclips():
    inctrl = PROFILES["full"].config("inctrl")
    assert (inctrl.epochs, inctrl.batch_size, inctrl.steps_per_epoch) == (10, 16, 100)
    assert inctrl.layers == (7, 9, 11) and inctrl.image_size == 240
    assert PROFILES["full"].backbone("inctrl").name == "ViT-B-16-plus-240"


def test_smoke_profile_uses_the_final_block_of_its_tiny_backbone():
    smoke = PROFILES["smoke"]
    depth = len(smoke.backbone("anomalyclip").build("cpu").visual.transformer.resblocks)
    assert smoke.config("anomalyclip").features == (depth,)


def test_an_unknown_method_or_one_without_a_setup_for_the_profile_is_named(monkeypatch):
    import dataclasses

    from zsadlab import methods

    with pytest.raises(ValueError, match="unknown method 'patchcore'"):
        PROFILES["smoke"].config("patchcore")
    only_full = dataclasses.replace(methods.get_method("clip"), name="clip_full_only",
                                    setups={"full": methods.get_method("clip").setups["full"]})
    monkeypatch.setitem(methods._REGISTRY, only_full.name, only_full)
    with pytest.raises(ValueError, match="no setup for profile 'smoke'"):
        PROFILES["smoke"].config("clip_full_only")


def test_profiles_hold_no_method_setups_each_method_module_declares_its_own():
    from zsadlab import anomalyclip, inctrl, methods, vand, winclip

    assert set(f.name for f in dataclasses_fields(PROFILES["full"])) == {"name", "train_dataset", "test_dataset",
                                                                         "meaningful", "budget"}
    for module, names in ((anomalyclip, ["anomalyclip", "coop"]), (inctrl, ["inctrl"]), (vand, ["vand"]),
                          (winclip, ["winclip"])):
        for name in names:
            assert set(module.SETUPS) == set(methods.get_method(name).setups) == {"full", "lab", "smoke"}
    assert PROFILES["smoke"].config("anomalyclip") == anomalyclip.SETUPS["smoke"].config


def test_auto_without_weights_is_smoke_and_says_so_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("ZSADLAB_CLIP_WEIGHTS", raising=False)
    from zsadlab import profiles
    profiles._print_banner_once.cache_clear()
    assert get_profile("auto").name == "smoke"
    assert get_profile("smoke").name == "smoke"
    out = capsys.readouterr().out
    assert out.count("NOT meaningful") == 1


def test_smoke_models_build_on_cpu():
    smoke = get_profile("smoke", quiet=True)
    clip = smoke.backbone("anomalyclip").build("cpu")
    assert clip.visual.transformer.resblocks.__len__() == max(smoke.config("anomalyclip").features)


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("gpu")


def test_vand_runs_on_the_papers_setup_in_full_and_on_the_tiny_backbone_in_smoke():
    from zsadlab.vand import VANDConfig

    full, smoke = PROFILES["full"], PROFILES["smoke"]
    assert full.backbone("vand") == Backbone("ViT-L-14-336", "openai") and full.config("vand") == VANDConfig()
    assert smoke.backbone("vand").is_tiny
    assert smoke.config("vand").features == (2, 4, 6, 8) and smoke.config("vand").image_size == 112


L14, E31, E32 = ("ViT-L-14-336", "openai"), ("ViT-B-16-plus-240", "laion400m_e31"), ("ViT-B-16-plus-240", "laion400m_e32")


@pytest.mark.parametrize("present,expected,missing", [
    ({L14, E31, E32}, "full", None),
    ({L14, E32}, "smoke", E31),
    ({L14, E31}, "smoke", E32),
    ({E31, E32}, "smoke", L14),
    (set(), "smoke", L14),
])
def test_auto_is_full_only_when_all_three_full_backbones_have_weights(monkeypatch, capsys, present, expected, missing):
    from zsadlab import profiles

    from zsadlab import backbone

    assert {(setup.backbone.name, setup.backbone.pretrained) for setup in PROFILES["full"].setups.values()} == {
        L14, E31, E32}
    monkeypatch.setattr(backbone, "weights_available", lambda name, pretrained: (name, pretrained) in present)
    profiles._print_banner_once.cache_clear()
    profiles._print_once.cache_clear()
    assert get_profile("auto").name == expected
    out = capsys.readouterr().out
    assert ("NOT meaningful" in out) == (expected == "smoke")
    if missing:
        line = next(line for line in out.splitlines() if "missing full-profile weights" in line)
        assert f"{missing[0]} ({missing[1]})" in line
        assert all(f"{name} ({tag})" not in line for name, tag in present)
