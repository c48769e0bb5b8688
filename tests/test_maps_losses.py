"""Maps and losses: the official reductions, on inputs whose answers are known."""
import numpy as np
import pytest
import scipy.ndimage
import torch

from zsadlab import losses as L
from zsadlab.maps import anomaly_map, gaussian_smooth, image_scores, layer_anomaly_map, similarity_maps


@pytest.mark.parametrize("shape,sigma", [((2, 112, 112), 4.0), ((1, 37, 50), 2.5), ((1, 9, 9), 4.0)])
def test_gaussian_smoothing_equals_scipy_reflect_mode(shape, sigma):
    maps = np.random.default_rng(0).random(shape).astype(np.float32)
    expected = np.stack([scipy.ndimage.gaussian_filter(m, sigma=sigma) for m in maps])
    np.testing.assert_allclose(gaussian_smooth(torch.from_numpy(maps), sigma).numpy(), expected, atol=1e-6)


def test_patches_are_laid_out_row_major_before_upsampling():
    probs = torch.zeros(1, 1 + 4 * 4, 2)
    probs[..., 0] = 1
    probs[0, 1 + 1 * 4 + 3] = torch.tensor([0.0, 1.0])  # anomalous patch at row 1, column 3
    maps = similarity_maps(probs, image_size=8)  # each patch covers 2x2 pixels
    assert maps[0, 1, 2:4, 6:8].min() > 0.5 and maps[0, 1, :2].max() < 0.5 and maps[0, 1, :, :4].max() < 0.5


def test_layer_maps_are_averaged_channels_and_summed_over_layers():
    maps = torch.tensor([[[[0.2]], [[0.8]]]])  # [B=1, 2, 1, 1]
    assert layer_anomaly_map(maps).item() == pytest.approx(0.8)
    assert anomaly_map([layer_anomaly_map(maps)] * 4).item() == pytest.approx(3.2)  # sum, range [0, L]


def test_image_score_is_the_softmax_of_cosines_over_temperature():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    score = image_scores(torch.tensor([[0.0, 2.0]]), text)
    assert score.item() == pytest.approx(1 / (1 + np.exp(-1 / 0.07)))


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
