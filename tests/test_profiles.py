"""Profiles choose backbones and sizes; ``auto`` falls back to smoke with a one-time banner."""
import pytest

from zsadlab.profiles import PROFILES, get_profile


def test_full_profile_is_the_papers_setup():
    full = PROFILES["full"]
    assert (full.anomalyclip_backbone.name, full.anomalyclip_backbone.pretrained) == ("ViT-L-14-336", "openai")
    assert full.anomalyclip_image_size == 518 and full.anomalyclip_features == (6, 12, 18, 24)
    assert full.anomalyclip_dpam_blocks == 19 and full.inctrl_layers == (7, 9, 11)


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
    clip = smoke.anomalyclip_backbone.build("cpu")
    assert clip.visual.transformer.resblocks.__len__() == max(smoke.anomalyclip_features)


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("gpu")
