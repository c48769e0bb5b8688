"""DPAM: the dual path adds local attention without touching the original path or the model."""
import pytest
import torch

from zsadlab.backbone import block_tokens
from zsadlab.dpam import DPAM_MODES, attention_maps, dpam_tokens


@pytest.fixture(scope="module")
def visual(clip):
    return clip.visual


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_no_dpam_is_plain_clip(visual, x):
    plain, final = block_tokens(visual, x, [2, 8])
    for mode, blocks in [(None, 5), ("vv", 0)]:
        dpam_final, tokens = dpam_tokens(visual, x, [2, 8], dpam_blocks=blocks, mode=mode)
        torch.testing.assert_close(dpam_final, final)
        torch.testing.assert_close(tokens[1], plain[1])


@torch.no_grad()
@pytest.mark.parametrize("mode", sorted(DPAM_MODES))
def test_original_path_is_unchanged_and_layers_before_dpam_are_plain(visual, x, mode):
    plain, final = block_tokens(visual, x, [2, 3, 8])
    dpam_final, tokens = dpam_tokens(visual, x, [2, 3, 8], dpam_blocks=5, mode=mode)
    torch.testing.assert_close(dpam_final, final, rtol=0, atol=1e-5)  # global embedding unaffected
    torch.testing.assert_close(tokens[0], plain[0]); torch.testing.assert_close(tokens[1], plain[1])
    assert not torch.allclose(tokens[2], plain[2], atol=1e-3)  # refined layer comes from the DPAM path


@torch.no_grad()
def test_one_refined_block_is_residual_plus_local_attention(visual, x):
    """With only the last block refined, the DPAM path is the stream before it plus V-V attention."""
    (before,), _ = block_tokens(visual, x, [7])
    block = visual.transformer.resblocks[7]
    h = block.ln_1(before)
    v = torch.nn.functional.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, -1)[2]
    heads = block.attn.num_heads
    vh = v.view(2, -1, heads, 128 // heads).transpose(1, 2)
    attn = torch.softmax(vh @ vh.transpose(-1, -2) / (128 // heads) ** 0.5, dim=-1) @ vh
    expected = before + block.attn.out_proj(attn.transpose(1, 2).flatten(2))
    _, (tokens,) = dpam_tokens(visual, x, [8], dpam_blocks=1, mode="vv")
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)


def test_attention_rows_are_distributions_and_vv_is_more_diagonal_than_qk(visual, x):
    qk = attention_maps(visual, x, block=6, mode=None)  # [B, N, N]
    vv = attention_maps(visual, x, block=6, mode="vv")
    torch.testing.assert_close(vv.sum(-1), torch.ones(vv.shape[:-1]))
    diagonal = lambda a: torch.diagonal(a, dim1=-2, dim2=-1).mean()
    assert diagonal(vv) > diagonal(qk)


def test_unknown_mode_and_bad_block_counts_are_refused(visual, x):
    with pytest.raises(ValueError, match="DPAM mode"):
        dpam_tokens(visual, x, [8], 5, mode="qk")
    with pytest.raises(ValueError, match="1-based"):
        dpam_tokens(visual, x, [0], 5)
    with pytest.raises(ValueError, match="dpam_blocks"):
        dpam_tokens(visual, x, [8], 9)
