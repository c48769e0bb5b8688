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
    load_clip,
    pooled_image_embedding,
    project_tokens,
    resized_positional_embedding,
    tiny_clip,
    tokenize,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "anomalyclip"


@pytest.fixture(scope="module")
def clip():
    return tiny_clip("anomalyclip", seed=0)


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


@pytest.mark.parametrize("kind", ["anomalyclip", "inctrl"])
def test_tiny_models_are_identical_for_one_seed_and_differ_across_seeds(kind):
    a, b, c = tiny_clip(kind, seed=3), tiny_clip(kind, seed=3), tiny_clip(kind, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.visual.proj, c.visual.proj)


def test_tiny_model_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    tiny_clip("anomalyclip", seed=9)
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
    clip = tiny_clip("anomalyclip", seed=0)
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
    monkeypatch.setattr(backbone, "_can_connect", lambda *args: time.sleep(30) or True)
    started = time.monotonic()
    assert backbone.hub_reachable(timeout=0.5) is False
    assert time.monotonic() - started < 2
