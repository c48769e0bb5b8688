"""From token/text similarity to anomaly maps and image scores (AnomalyCLIP paper §3.4, test.py).

Pipeline per image (fixtures/anomalyclip §5.2):

1. :func:`patch_probabilities` - softmax(cos(token, [normal, anomalous]) / 0.07) per token;
2. :func:`similarity_maps` - drop CLS, lay the patches on the g x g grid, bilinear to S x S;
3. :func:`layer_anomaly_map` - ``(p_anomalous + 1 - p_normal) / 2`` per layer;
4. :func:`anomaly_map` - the layer maps **summed** (official quirk: range [0, L], not averaged);
5. :func:`gaussian_smooth` - scipy's ``gaussian_filter(sigma=4)`` (symmetric padding), on the device;
6. :func:`image_scores` - softmax(cos(global, text) / 0.07)[anomalous].
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .utils import square_side

TEMPERATURE = 0.07  # hard-coded in the official test.py / train.py; CLIP's logit_scale is not used


def _per_image_text(text: torch.Tensor, batch: int) -> torch.Tensor:
    """``[2, D]`` (shared) or ``[B, 2, D]`` (per image) -> ``[B, 2, D]``."""
    return text.expand(batch, -1, -1) if text.dim() == 2 else text


def similarity_logits(features: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``cos(features, text) / temperature``: features ``[B, N, D]`` (or ``[B, D]``) -> ``[B, N, 2]`` (or ``[B, 2]``)."""
    squeeze = features.dim() == 2
    features = F.normalize(features if not squeeze else features[:, None], dim=-1)  # [B, N, D]
    logits = features @ _per_image_text(text, features.shape[0]).transpose(1, 2) / temperature  # [B, N, 2]
    return logits[:, 0] if squeeze else logits


def patch_probabilities(tokens: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``[B, N, 2]`` softmax over [normal, anomalous] for every token (CLS row included)."""
    return similarity_logits(tokens, text, temperature).softmax(dim=-1)


def similarity_maps(probabilities: torch.Tensor, image_size: int) -> torch.Tensor:
    """``[B, 1+g*g, 2]`` token probabilities -> ``[B, 2, S, S]`` maps (CLS dropped, bilinear, align_corners=False)."""
    patches = probabilities[:, 1:]  # [B, g*g, 2]
    grid = square_side(patches.shape[1])
    if grid * grid != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    maps = patches.transpose(1, 2).reshape(-1, 2, grid, grid)  # [B, 2, g, g], row-major patches
    return F.interpolate(maps, size=(image_size, image_size), mode="bilinear", align_corners=False)


def layer_anomaly_map(maps: torch.Tensor) -> torch.Tensor:
    """``[B, 2, S, S]`` -> ``[B, S, S]``: ``(p_anomalous + 1 - p_normal) / 2`` (official test.py)."""
    return (maps[:, 1] + 1 - maps[:, 0]) / 2


def anomaly_map(layer_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum (not mean) of per-layer maps ``[B, S, S]``: the official ``feature_map_layer`` reduction."""
    return torch.stack(list(layer_maps)).sum(dim=0)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, device=None) -> torch.Tensor:
    """scipy's 1-D Gaussian: radius ``int(truncate * sigma + 0.5)``, normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _symmetric_index(size: int, radius: int, device) -> torch.Tensor:
    """Indices of a line padded by ``radius`` with scipy's 'reflect' (= numpy 'symmetric') rule."""
    index = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def gaussian_smooth(maps: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(map, sigma)`` for every map of ``[B, S, S]``, on the maps' device.

    Separable convolution with symmetric padding (the edge sample repeated), which is
    scipy's default ``mode='reflect'``. torch's own ``'reflect'`` padding is a different
    rule and is off by ~1e-2 (fixtures §5.2).
    """
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma, truncate, maps.device).to(maps.dtype)
    radius = kernel.numel() // 2
    height, width = maps.shape[-2:]
    x = maps[:, None]  # [B, 1, H, W]
    x = x[..., _symmetric_index(height, radius, maps.device), :]
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))  # along rows
    x = x[..., _symmetric_index(width, radius, maps.device)]
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))  # along columns
    return x[:, 0]


def image_scores(global_embedding: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``[B]`` anomaly probability: softmax(cos(global, [normal, anomalous]) / T)[anomalous]."""
    return similarity_logits(global_embedding, text, temperature).softmax(dim=-1)[:, 1]
