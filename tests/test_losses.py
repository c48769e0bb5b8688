"""Losses: focal and dice on the similarity maps, and the global/local switches."""
import pytest
import torch

from zsadlab import losses as L


def test_perfect_predictions_have_near_zero_local_loss():
    target = torch.zeros(2, 8, 8)
    target[1, 2:5, 2:5] = 1
    perfect = torch.stack([1 - target, target], dim=1)
    terms = L.local_loss_terms([perfect], target)
    assert terms["focal"].item() < 1e-8
    assert terms["dice_anomalous"].item() == pytest.approx(0, abs=1e-6)
    assert terms["dice_normal"].item() == pytest.approx(0, abs=1e-6)
    wrong = L.local_loss_terms([perfect.flip(1)], target)
    assert wrong["focal"].item() > 1 and wrong["dice_anomalous"].item() > 0.9


def test_loss_settings_are_the_paper_ablation_switches():
    assert L.LOSS_SETTINGS == {"both": (True, True), "global": (True, False), "local": (False, True)}
    with pytest.raises(ValueError, match="loss setting"):
        L.check_setting("pixel")
