"""DPAM - Diagonally Prominent Attention Map (AnomalyCLIP paper §3.3, Fig. 3).

CLIP's Q-K attention lets every patch look at the main object, so patch features
carry global object semantics and miss small local defects. DPAM adds a second,
*local* path through the last blocks of the ViT whose attention is computed from
V-V (or Q-Q, K-K) similarities: each token attends mostly to itself, giving an
attention map with a prominent diagonal.

The official dual path (fixtures/anomalyclip §5.1), per refined block:

    h       = ln_1(x_orig)                         # always the ORIGINAL path's state
    q, k, v = in_proj(h)                           # split as nn.MultiheadAttention does
    x_orig += out_proj(softmax(q k^T s) v);  x_orig += MLP(ln_2(x_orig))   # plain CLIP block
    x_dpam += out_proj(softmax(v v^T s) v)                                  # no FFN, no LayerNorm

with ``s = head_dim ** -0.5``. The DPAM path starts as the residual stream that enters
the first refined block. The global embedding comes from the original path, the
patch tokens of refined layers from the DPAM path.

Unlike the official code, the CLIP model is never modified: the same backbone
still gives plain CLIP features afterwards. Both attentions of a block share one
``in_proj`` and run as one batched ``scaled_dot_product_attention`` call.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .backbone import block_qkv, check_blocks, embed_image, merge_heads, residual_block

# mode -> (query, key) of the DPAM path from the block's (q, k, v); the value is always v.
DPAM_MODES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "vv": lambda q, k, v: (v, v),  # AnomalyCLIP's default
    "qq": lambda q, k, v: (q, q),
    "kk": lambda q, k, v: (k, k),
}


def check_mode(mode: str | None) -> str | None:
    """Validate a DPAM mode: one of :data:`DPAM_MODES` or ``None`` (plain CLIP attention)."""
    if mode is not None and mode not in DPAM_MODES:
        raise ValueError(f"unknown DPAM mode {mode!r}; choose one of {sorted(DPAM_MODES)} or None")
    return mode


def dual_path_block(
    block: torch.nn.Module, x_orig: torch.Tensor, x_dpam: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One refined block: the plain CLIP update of ``x_orig`` and the DPAM update of ``x_dpam``.

    Both ``[B, N, C]``. The two attentions run as one SDPA call on a ``2B`` batch.
    """
    batch = x_orig.shape[0]
    q, k, v = block_qkv(block, x_orig)  # [B, H, N, hd] each
    q_local, k_local = DPAM_MODES[mode](q, k, v)
    out = F.scaled_dot_product_attention(
        torch.cat([q, q_local]), torch.cat([k, k_local]), torch.cat([v, v])
    )  # [2B, H, N, hd]
    out = block.attn.out_proj(merge_heads(out))  # [2B, N, C]
    x_orig = x_orig + block.ls_1(out[:batch])
    x_orig = x_orig + block.ls_2(block.mlp(block.ln_2(x_orig)))
    return x_orig, x_dpam + out[batch:]


def dpam_tokens(
    visual: torch.nn.Module, x: torch.Tensor, blocks: Sequence[int], dpam_blocks: int, mode: str | None = "vv"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the ViT with DPAM on its last ``dpam_blocks`` blocks.

    Returns ``(final, tokens)``: ``final`` ``[B, N, W]`` is the original path after the last
    block (its CLS row gives the global embedding); ``tokens[i]`` ``[B, N, W]`` is the
    stream after block ``blocks[i]`` (1-based) - the DPAM path for refined blocks, the
    plain stream before them. ``mode=None`` or ``dpam_blocks=0`` is plain CLIP.
    Official ``DPAM_layer = dpam_blocks + 1`` (19 refined blocks of 24 for ViT-L).
    """
    resblocks = visual.transformer.resblocks
    depth = len(resblocks)
    wanted = check_blocks(blocks, depth)
    if not 0 <= dpam_blocks <= depth:
        raise ValueError(f"dpam_blocks must be in 0..{depth}, got {dpam_blocks}")
    first_refined = depth - dpam_blocks + 1 if check_mode(mode) and dpam_blocks else depth + 1
    x_orig = embed_image(visual, x)  # [B, N, W]
    x_dpam = None
    taken: dict[int, torch.Tensor] = {}
    for index, block in enumerate(resblocks, start=1):
        if index < first_refined:
            x_orig = residual_block(block, x_orig)
        else:
            x_dpam = x_orig if x_dpam is None else x_dpam
            x_orig, x_dpam = dual_path_block(block, x_orig, x_dpam, mode)
        if index in wanted:
            taken[index] = x_dpam if x_dpam is not None else x_orig
    return x_orig, [taken[b] for b in wanted]


@torch.no_grad()
def attention_maps(visual: torch.nn.Module, x: torch.Tensor, block: int, mode: str | None = "vv") -> torch.Tensor:
    """Head-averaged attention weights ``[B, N, N]`` of one block (1-based), for pictures.

    ``mode=None`` gives CLIP's own Q-K attention; ``"vv"``/``"qq"``/``"kk"`` the DPAM
    path's. Inputs to the block come from the plain stream (as in the dual path,
    whose attention input is always the original path's state).
    """
    resblocks = visual.transformer.resblocks
    (index,) = check_blocks([block], len(resblocks))
    stream = embed_image(visual, x)
    for earlier in resblocks[: index - 1]:
        stream = residual_block(earlier, stream)
    q, k, v = block_qkv(resblocks[index - 1], stream)
    query, key = (q, k) if mode is None else DPAM_MODES[check_mode(mode)](q, k, v)
    weights = torch.softmax(query @ key.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # [B, H, N, N]
    return weights.mean(dim=1)
