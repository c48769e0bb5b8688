"""Backbone: tokens from any block at any size, OpenAI state dicts, tiny models, offline failure."""
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from zsadlab.backbone import (
    WeightsUnavailableError,
    block_tokens,
    clip_from_openai_state_dict,
    encode_text,
    factory_rebuilt,
    load_clip,
    pooled_image_embedding,
    project_tokens,
    resized_positional_embedding,
    tiny_clip,
    tokenize,
    weights_file_names,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "anomalyclip"


@pytest.mark.parametrize("blocks", [(1,), (2, 4, 6, 8), (3, 8)])
def test_block_tokens_equal_open_clip_intermediates_at_native_size(clip, blocks):
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ours, final = block_tokens(clip.visual, x, blocks)
        theirs = clip.visual.forward_intermediates(x, indices=[b - 1 for b in blocks], intermediates_only=True,
                                                   output_fmt="NLC", output_extra_tokens=True)
    for mine, patches, cls in zip(ours, theirs["image_intermediates"], theirs["image_intermediates_prefix"]):
        torch.testing.assert_close(mine, torch.cat([cls, patches], dim=1), rtol=0, atol=1e-6)


def test_final_stream_gives_open_clip_encode_image(clip):
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        _, final = block_tokens(clip.visual, x, [8])
        torch.testing.assert_close(pooled_image_embedding(clip.visual, final), clip.encode_image(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [140, 168, 224])
def test_tokens_at_other_sizes_use_a_bilinear_resized_table_without_mutating_the_model(clip, size):
    native = clip.visual.positional_embedding.detach().clone()
    with torch.no_grad():
        tokens, _ = block_tokens(clip.visual, torch.randn(1, 3, size, size), [4])
    grid = size // 14
    assert tokens[0].shape == (1, 1 + grid * grid, 128)
    assert torch.equal(clip.visual.positional_embedding, native)
    table = resized_positional_embedding(clip.visual, grid)
    assert table.shape == (1 + grid * grid, 128) and torch.equal(table[0], native[0])


def test_openai_state_dict_gives_the_fixture_tokens():
    clip = clip_from_openai_state_dict(dict(np.load(FIX / "tiny_clip_openai_sd.npz")))
    x = torch.from_numpy(np.load(FIX / "inputs.npz")["images_112"])
    with torch.no_grad():
        _, final = block_tokens(clip.visual, x, [8])
        cls = project_tokens(clip.visual, final[:, 0])
    expected = np.load(FIX / "vision.npz")["plain_patch_112"][3][:, 0]  # CLS row of block 8, ln_post + proj
    np.testing.assert_allclose(cls.numpy(), expected, rtol=0, atol=1e-5)
    assert all(p.dtype == torch.float32 for p in clip.parameters())


@pytest.mark.parametrize("kind", ["vit14-112", "vit16-240"])
def test_tiny_models_are_identical_for_one_seed_and_differ_across_seeds(kind):
    a, b, c = tiny_clip(kind, seed=3), tiny_clip(kind, seed=3), tiny_clip(kind, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.visual.proj, c.visual.proj)


def test_tiny_models_are_named_by_architecture_and_the_former_method_names_still_build_them():
    from zsadlab.backbone import TINY_CLIPS

    assert sorted(TINY_CLIPS) == ["vit14-112", "vit16-240"]
    for former, kind in (("anomalyclip", "vit14-112"), ("inctrl", "vit16-240")):
        assert torch.equal(tiny_clip(former).visual.proj, tiny_clip(kind).visual.proj)


def test_tiny_model_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    tiny_clip("vit14-112", seed=9)
    assert torch.equal(torch.rand(1), expected)


def test_truncated_text_encoder_matches_open_clip(clip):
    tokens = tokenize(["a photo of a bottle.", "a photo of a damaged bottle with a long scratch."])
    with torch.no_grad():
        torch.testing.assert_close(encode_text(clip, tokens), clip.encode_text(tokens), rtol=0, atol=1e-5)


def test_missing_weights_offline_fail_fast_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ZSADLAB_CLIP_WEIGHTS", raising=False)
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        load_clip("ViT-L-14-336", "openai", device="cpu")
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "ViT-L-14-336" in message and "ZSADLAB_CLIP_WEIGHTS" in message and str(tmp_path) in message


def test_local_weight_file_loads_and_a_wrong_one_is_named(tmp_path):
    clip = tiny_clip("vit14-112", seed=0)
    good = tmp_path / "weights.pt"
    torch.save(clip.state_dict(), good)
    with pytest.raises(ValueError, match="weights.pt"):
        load_clip("ViT-B-32", str(good), device="cpu")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt"):
        load_clip("ViT-B-32", str(broken), device="cpu")


def test_openai_models_get_quick_gelu_from_a_tag_or_a_file():
    from zsadlab.backbone import _uses_quick_gelu

    assert _uses_quick_gelu("ViT-L-14-336", "openai") and _uses_quick_gelu("ViT-L-14-336", None)
    assert not _uses_quick_gelu("ViT-B-16-plus-240", "laion400m_e32")
    assert not _uses_quick_gelu("ViT-B-16-plus-240", None)


def test_a_hanging_network_lookup_cannot_delay_the_offline_error(monkeypatch):
    import zsadlab.backbone as backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    stuck_seconds = 30.0
    monkeypatch.setattr(backbone, "_can_connect", lambda *args: time.sleep(stuck_seconds) or True)
    started = time.monotonic()
    assert backbone.hub_reachable(timeout=0.5) is False
    waited = time.monotonic() - started
    assert waited < stuck_seconds / 3  # a fail-fast check, not a speed test: it returns, never waits for the stuck lookup


# ---------------------------------------------------------------------------
# Weight files: no code runs, one file per model, one line per mistake
# ---------------------------------------------------------------------------


def openai_torchscript_archive(path: Path) -> dict[str, torch.Tensor]:
    """Trace the fixture's tiny CLIP into a TorchScript file laid out as OpenAI's releases; return its state dict."""
    model = clip_from_openai_state_dict(dict(np.load(FIX / "tiny_clip_openai_sd.npz")))
    for key, value in {"input_resolution": 112, "context_length": 77, "vocab_size": 49408}.items():
        model.__dict__.pop(key, None)
        model.register_buffer(key, torch.tensor(value))  # OpenAI's archives carry these as tensors
    with pytest.warns(Warning):  # torch deprecates jit; it is only used to write the test file
        traced = torch.jit.trace_module(model, {"encode_image": torch.zeros(1, 3, 112, 112)}, check_trace=False)
        traced.save(str(path))
    return model.state_dict()


class WritesAFileOnLoad(torch.nn.Module):
    """A scripted module whose ``__setstate__`` (run by ``torch.jit.load``) creates the file named in its state."""

    def __init__(self, target: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.w, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.w = state[0] + 0 * torch.from_file(state[1], shared=True, size=3)  # creates the file
        self.target = state[1]
        self.training = state[2]


def test_an_openai_torchscript_archive_is_read_as_data_to_the_same_weights(tmp_path):
    from zsadlab.backbone import _state_dict_from_file

    written = openai_torchscript_archive(tmp_path / "tiny-openai.pt")
    with pytest.warns(Warning):
        expected = torch.jit.load(str(tmp_path / "tiny-openai.pt")).state_dict()  # what code-running loading gives
    read = _state_dict_from_file(tmp_path / "tiny-openai.pt")
    assert sorted(read) == sorted(expected) == sorted([*written, "attn_mask"])
    assert all(torch.equal(read[k], expected[k]) for k in expected)
    rebuilt = clip_from_openai_state_dict(read)
    reference = clip_from_openai_state_dict(dict(np.load(FIX / "tiny_clip_openai_sd.npz")))
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), reference.state_dict().values()))


def test_a_malicious_torchscript_archive_does_not_run_its_code(tmp_path):
    target = tmp_path / "created-by-the-archive"
    with pytest.warns(Warning):
        torch.jit.script(WritesAFileOnLoad(str(target))).save(str(tmp_path / "evil.pt"))
        torch.jit.load(str(tmp_path / "evil.pt"))  # the failure: torch.jit.load runs __setstate__
    assert target.exists()
    target.unlink()
    with pytest.raises(ValueError, match="evil.pt") as err:
        load_clip("ViT-B-32", str(tmp_path / "evil.pt"), device="cpu")
    assert not target.exists()
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)


def test_a_weights_variable_naming_a_missing_file_says_so(monkeypatch, tmp_path):
    from zsadlab.backbone import weights_available

    monkeypatch.setenv("ZSADLAB_CLIP_WEIGHTS", str(tmp_path / "nonexistent.pt"))
    for call in (lambda: load_clip("ViT-L-14-336", "openai", device="cpu"),
                 lambda: weights_available("ViT-L-14-336", "openai")):
        with pytest.raises(WeightsUnavailableError, match="nonexistent.pt, which does not exist"):
            call()
    with pytest.raises(WeightsUnavailableError, match="gone.pt, which does not exist"):
        load_clip("ViT-B-32", str(tmp_path / "gone.pt"), device="cpu")


def test_each_model_finds_its_own_file_and_the_old_variable_feeds_vit_l_14_336_only(monkeypatch, tmp_path):
    from zsadlab.backbone import local_weights_file

    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("ViT-L-14-336.pt", "ViT-B-16-plus-240-laion400m_e32.safetensors"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "vitl.pt").write_bytes(b"x")
    monkeypatch.delenv("ZSADLAB_CLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("ZSADLAB_WEIGHTS_DIR", str(folder))
    assert local_weights_file("ViT-L-14-336", "openai") == folder / "ViT-L-14-336.pt"  # one tag: a plain name is fine
    assert local_weights_file("ViT-B-16-plus-240", "laion400m_e32") == folder / "ViT-B-16-plus-240-laion400m_e32.safetensors"
    assert local_weights_file("ViT-B-32", "openai") is None
    monkeypatch.setenv("ZSADLAB_CLIP_WEIGHTS", str(tmp_path / "vitl.pt"))
    assert local_weights_file("ViT-L-14-336", "openai") == tmp_path / "vitl.pt"
    assert local_weights_file("ViT-B-16-plus-240", "laion400m_e32") == folder / "ViT-B-16-plus-240-laion400m_e32.safetensors"
    (folder / "ViT-L-14-336px.pt").write_bytes(b"x")  # OpenAI's own download name is found too
    (folder / "ViT-L-14-336.pt").unlink()
    monkeypatch.delenv("ZSADLAB_CLIP_WEIGHTS")
    assert local_weights_file("ViT-L-14-336", "openai") == folder / "ViT-L-14-336px.pt"
    (folder / "ViT-L-14-336-openai.pt").write_bytes(b"x")  # the model-and-tag name comes first
    assert local_weights_file("ViT-L-14-336", "openai") == folder / "ViT-L-14-336-openai.pt"


def test_winclip_e31_and_inctrl_e32_weight_files_are_never_crossed(monkeypatch, tmp_path):
    from zsadlab.backbone import local_weights_file

    monkeypatch.setenv("ZSADLAB_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "ViT-B-16-plus-240-laion400m_e31.pt").write_bytes(b"x")
    assert local_weights_file("ViT-B-16-plus-240", "laion400m_e31") == tmp_path / "ViT-B-16-plus-240-laion400m_e31.pt"
    assert local_weights_file("ViT-B-16-plus-240", "laion400m_e32") is None  # WinCLIP's file never feeds InCTRL
    (tmp_path / "vit_b_16_plus_240-laion400m_e32-699c4b84.pt").write_bytes(b"x")  # open_clip's own download name
    assert local_weights_file("ViT-B-16-plus-240", "laion400m_e32") == tmp_path / "vit_b_16_plus_240-laion400m_e32-699c4b84.pt"
    assert local_weights_file("ViT-B-16-plus-240", "laion400m_e31") == tmp_path / "ViT-B-16-plus-240-laion400m_e31.pt"


def test_a_plain_vit_b_16_plus_240_file_is_refused_in_one_line_naming_both_tagged_names(monkeypatch, tmp_path):
    from zsadlab.backbone import local_weights_file, weights_available

    monkeypatch.setenv("ZSADLAB_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "ViT-B-16-plus-240.pt").write_bytes(b"x")
    for call in (lambda: local_weights_file("ViT-B-16-plus-240", "laion400m_e31"),
                 lambda: weights_available("ViT-B-16-plus-240", "laion400m_e32")):
        with pytest.raises(WeightsUnavailableError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and str(tmp_path / "ViT-B-16-plus-240.pt") in message
        assert "ViT-B-16-plus-240-laion400m_e31.pt" in message and "ViT-B-16-plus-240-laion400m_e32.pt" in message
    (tmp_path / "ViT-B-16-plus-240-laion400m_e32.pt").write_bytes(b"x")  # the tagged file wins, the plain one is unused
    assert local_weights_file("ViT-B-16-plus-240", "laion400m_e32") == tmp_path / "ViT-B-16-plus-240-laion400m_e32.pt"


def test_a_hub_copy_shared_by_two_tags_is_not_taken_for_either(monkeypatch, tmp_path):
    import open_clip

    from zsadlab import backbone

    shared = "org/one-repo/"  # open_clip 3.3 gives laion400m_e32 the hub repository of laion400m_e31
    configs = {"e31": {"hf_hub": shared, "url": "https://x/e31.pt"}, "e32": {"hf_hub": shared, "url": "https://x/e32.pt"},
               "own": {"hf_hub": "org/own/", "url": "https://x/own.pt"}}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: configs.get(tag, {}))
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda name: ["e31", "e32"])
    monkeypatch.setattr(backbone, "_hf_cached_file", lambda hub, cache_dir: tmp_path / "hub-copy.bin")
    assert not backbone.hub_identifies_tag("M", "e31") and not backbone.hub_identifies_tag("M", "e32")
    assert backbone.cached_weights("M", "e32", cache_dir=str(tmp_path)) is None
    (tmp_path / "e32.pt").write_bytes(b"x")  # the tag's own URL download is found
    assert backbone.cached_weights("M", "e32", cache_dir=str(tmp_path)) == tmp_path / "e32.pt"
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda name: ["own", "e31"])
    assert backbone.hub_identifies_tag("M", "own")
    assert backbone.cached_weights("M", "own") == tmp_path / "hub-copy.bin"


def test_a_file_of_another_model_is_refused_naming_the_model_and_the_file(monkeypatch, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(tiny_clip("vit16-240", seed=0).state_dict(), folder / "ViT-B-32.pt")
    monkeypatch.setenv("ZSADLAB_WEIGHTS_DIR", str(folder))
    with pytest.raises(ValueError) as err:
        load_clip("ViT-B-32", "openai", device="cpu")
    message = str(err.value)
    assert "ViT-B-32" in message and str(folder / "ViT-B-32.pt") in message and "another model" in message


def test_real_weights_from_a_file_load_without_the_random_init_warning_and_name_the_file(tmp_path, caplog, capsys):
    import open_clip

    reference = open_clip.create_model("ViT-B-32", pretrained=None)
    torch.save(reference.state_dict(), tmp_path / "vitb32.pt")
    caplog.clear()
    clip = load_clip("ViT-B-32", str(tmp_path / "vitb32.pt"), device="cpu")
    assert torch.equal(clip.visual.proj, reference.visual.proj)
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    assert f"ViT-B-32 weights loaded from {tmp_path / 'vitb32.pt'}" in capsys.readouterr().err


def test_a_truncated_or_wrong_model_file_is_one_line_and_never_makes_it_available(monkeypatch, tmp_path):
    import open_clip

    from zsadlab import backbone
    from zsadlab.backbone import weights_available

    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    monkeypatch.delenv("ZSADLAB_CLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("ZSADLAB_WEIGHTS_DIR", str(folder))
    own = folder / weights_file_names("ViT-B-32", "openai")[0]
    own.write_bytes(whole[: len(whole) // 2])
    assert weights_available("ViT-B-32", "openai") is False
    with pytest.raises(WeightsUnavailableError) as err:
        load_clip("ViT-B-32", "openai", device="cpu")
    assert str(own) in str(err.value) and "truncated" in str(err.value)
    assert "\n" not in str(err.value)
    reads, real_stored_bytes = [], backbone._stored_bytes
    monkeypatch.setattr(backbone, "_stored_bytes", lambda path: reads.append(path) or 0)
    own.write_bytes(whole)  # a new version of the file: judged again, once
    assert weights_available("ViT-B-32", "openai") is False and weights_available("ViT-B-32", "openai") is False
    assert len(reads) == 1
    monkeypatch.setattr(backbone, "_stored_bytes", real_stored_bytes)
    backbone._weights_file_verdict.cache_clear()  # forget the verdict the stand-in gave
    assert weights_available("ViT-B-32", "openai") is True


def test_auto_does_not_choose_full_on_weight_files_it_cannot_load(monkeypatch, tmp_path, capsys):
    from zsadlab.profiles import PROFILES, get_profile

    folder = tmp_path / "weights"
    folder.mkdir()
    for backbone in {setup.backbone for setup in PROFILES["full"].setups.values()}:
        (folder / weights_file_names(backbone.name, backbone.pretrained)[0]).write_bytes(
            b"PK\x03\x04 cut off by a failed download")
    monkeypatch.delenv("ZSADLAB_CLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("ZSADLAB_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert get_profile("auto").name == "smoke"


def test_inctrls_e32_weights_are_downloaded_by_their_own_url_and_named_by_tag_when_missing(monkeypatch, tmp_path):
    import open_clip

    from zsadlab import backbone

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("ZSADLAB_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(backbone, "hub_reachable", lambda timeout=None: False)
    with pytest.raises(WeightsUnavailableError, match="ViT-B-16-plus-240-laion400m_e32.pt in the folder named by"):
        load_clip("ViT-B-16-plus-240", "laion400m_e32", device="cpu")
    asked = []
    monkeypatch.setattr(backbone, "hub_reachable", lambda timeout=None: True)
    monkeypatch.setattr(open_clip, "download_pretrained",
                        lambda cfg, prefer_hf_hub=True: asked.append((cfg["url"], prefer_hf_hub)) or str(tmp_path / "w.pt"))
    monkeypatch.setattr(backbone, "clip_from_file", lambda name, path, quick_gelu: torch.nn.Linear(1, 1))
    if backbone.hub_identifies_tag("ViT-B-16-plus-240", "laion400m_e32"):
        pytest.skip("this open_clip gives laion400m_e32 a hub copy of its own")
    load_clip("ViT-B-16-plus-240", "laion400m_e32", device="cpu")
    assert asked == [(open_clip.get_pretrained_cfg("ViT-B-16-plus-240", "laion400m_e32")["url"], False)]
    assert asked[0][0].endswith("vit_b_16_plus_240-laion400m_e32-699c4b84.pt")
# --- factory_rebuilt: the model open_clip's factory builds at a non-native size -------------------

def open_clip_factory_model(clip, size, antialias):
    """What open_clip's own factory path gives: a fresh CLIP from the config (no quick_gelu) + resized state dict."""
    import open_clip

    model = open_clip.model.CLIP(embed_dim=64, vision_cfg=dict(image_size=size, layers=8, width=128, patch_size=14),
                                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=12),
                                 quick_gelu=False)
    state = clip.state_dict()
    open_clip.model.resize_pos_embed(state, model, antialias=antialias)
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("antialias", [False, True])
def test_factory_rebuilt_equals_open_clips_fresh_build_at_a_non_native_size(antialias):
    clip = clip_from_openai_state_dict(dict(np.load(FIX / "tiny_clip_openai_sd.npz")))
    rebuilt = factory_rebuilt(clip, 140, antialias=antialias)
    fresh = open_clip_factory_model(clip, 140, antialias)
    x = torch.randn(2, 3, 140, 140)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode_image(x), fresh.encode_image(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(rebuilt.encode_text(tokenize("a photo")), fresh.encode_text(tokenize("a photo")),
                                   rtol=0, atol=1e-6)
    assert torch.equal(rebuilt.visual.positional_embedding, fresh.visual.positional_embedding)


def test_factory_rebuilt_shares_the_weights_and_leaves_the_model_untouched(clip):
    native = clip.visual.positional_embedding.detach().clone()
    rebuilt = factory_rebuilt(clip, 140, antialias=False)
    assert factory_rebuilt(clip, 112) is clip
    assert rebuilt.visual.conv1.weight is clip.visual.conv1.weight
    assert torch.equal(clip.visual.positional_embedding, native)
    activations = {type(m).__name__ for m in rebuilt.modules()} - {type(m).__name__ for m in clip.modules()}
    assert activations == {"GELU"} and rebuilt.visual.grid_size == (10, 10)


def test_antialiasing_changes_the_rebuilt_positional_table(clip):
    plain = factory_rebuilt(clip, 140, antialias=False).visual.positional_embedding
    smooth = factory_rebuilt(clip, 140, antialias=True).visual.positional_embedding
    assert torch.equal(plain[0], smooth[0]) and (plain - smooth).abs().max() > 1e-3
