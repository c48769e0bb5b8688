"""Maps: the official reductions from token similarities to smoothed anomaly maps and image scores."""
import numpy as np
import pytest
import scipy.ndimage
import torch

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
