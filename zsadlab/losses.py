"""AnomalyCLIP's training objective (paper §3.4, Eq. 3-4; official loss.py / train.py).

* global loss: cross-entropy between the image logits ``cos(global, text) / 0.07`` and the label;
* local loss, per feature layer: focal loss + dice on the anomalous channel + dice on the
  normal channel of the ``[B, 2, S, S]`` similarity maps, all layers summed, times ``lam = 4``.

:data:`LOSS_SETTINGS` are the paper's ablation switches (global-only / local-only / both).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_GAMMA = 2.0
FOCAL_SMOOTH = 1e-5

# setting -> (use the global CE, use the local focal + dice)
LOSS_SETTINGS: dict[str, tuple[bool, bool]] = {"both": (True, True), "global": (True, False), "local": (False, True)}


def focal_loss(probabilities: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """The official FocalLoss on probabilities ``[B, 2, S, S]`` and a binary target ``[B, S, S]``.

    The input already holds probabilities (no softmax is applied); the one-hot target
    is clamped to [1e-5, 1 - 1e-5]; ``pt = sum_c onehot_c p_c + 1e-5``; the loss is
    ``mean(-(1 - pt)^gamma log pt)`` over all pixels (fixtures §5.4).
    """
    onehot = F.one_hot(target.long(), num_classes=probabilities.shape[1]).movedim(-1, 1).to(probabilities.dtype)
    onehot = onehot.clamp(FOCAL_SMOOTH, 1.0 - FOCAL_SMOOTH)  # [B, 2, S, S]
    pt = (onehot * probabilities).sum(dim=1) + FOCAL_SMOOTH  # [B, S, S]
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official BinaryDiceLoss: ``1 - mean_b (2 sum p t + 1) / (sum p + sum t + 1)``; inputs ``[B, S, S]``."""
    p, t = probability.flatten(1), target.flatten(1).to(probability.dtype)
    dice = (2 * (p * t).sum(dim=1) + 1) / (p.sum(dim=1) + t.sum(dim=1) + 1)  # [B]
    return 1 - dice.mean()


def image_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the image logits ``[B, 2]`` against labels ``[B]`` (0 normal, 1 anomalous)."""
    return F.cross_entropy(logits, labels.long())


def local_loss_terms(layer_maps: list[torch.Tensor], masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-layer focal, dice(anomalous vs gt), dice(normal vs 1-gt), each ``[L]``; maps ``[B, 2, S, S]``."""
    target = (masks > 0.5).to(layer_maps[0].dtype)  # [B, S, S], binarised as train.py does
    focal = torch.stack([focal_loss(m, target) for m in layer_maps])
    dice_anomalous = torch.stack([dice_loss(m[:, 1], target) for m in layer_maps])
    dice_normal = torch.stack([dice_loss(m[:, 0], 1 - target) for m in layer_maps])
    return {"focal": focal, "dice_anomalous": dice_anomalous, "dice_normal": dice_normal}


def check_setting(setting: str) -> str:
    if setting not in LOSS_SETTINGS:
        raise ValueError(f"unknown loss setting {setting!r}; choose one of {sorted(LOSS_SETTINGS)}")
    return setting
