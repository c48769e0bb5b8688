"""Parity of zsadlab.metrics with the official AnomalyCLIP metrics.py (fixtures §5.6, §6 metrics.npz).

The fixture holds the reference outputs on 6 toy 64×64 maps (3 normal images, then 1, 2 and 3
regions). Tolerance 1e-9 (fixtures §8: same scikit-learn, so the numbers are exact).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from zsadlab import metrics

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "anomalyclip" / "metrics.npz"


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


def test_image_auroc_and_ap_equal_the_reference(ref):
    assert abs(metrics.image_auroc(ref["image_scores"], ref["image_labels"]) - ref["image_auroc"]) < 1e-9
    assert abs(metrics.image_ap(ref["image_scores"], ref["image_labels"]) - ref["image_ap"]) < 1e-9


def test_pixel_auroc_equals_the_reference(ref):
    assert abs(metrics.pixel_auroc(ref["anomaly_maps"], ref["masks"]) - ref["pixel_auroc"]) < 1e-9


def test_anomalyclip_aupro_equals_the_reference(ref):
    value = metrics.aupro(ref["anomaly_maps"], ref["masks"], method="anomalyclip")
    assert abs(value - ref["pixel_aupro"]) < 1e-9


def test_anomalyclip_aupro_from_torch_tensors_as_test_py_builds_them(ref):
    maps = torch.from_numpy(ref["anomaly_maps"])  # [N, H, W] float32
    masks = torch.from_numpy(ref["masks"])  # float 0/1 [N, H, W], test.py's masks squeezed
    assert abs(metrics.aupro(maps, masks, method="anomalyclip") - ref["pixel_aupro"]) < 1e-9


def test_anomalyclip_curve_equals_the_reference_curve(ref):
    thresholds, fpr, pro = metrics.anomalyclip_pro_curve(ref["anomaly_maps"], ref["masks"])
    np.testing.assert_allclose(thresholds, ref["aupro_thresholds"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(fpr, ref["aupro_fprs"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(pro, ref["aupro_pros"], rtol=0, atol=1e-12)
    assert (fpr < 0.3).sum() == 149  # fixtures §6: 149 points kept, FPR 0 to 0.2875


def test_mvtec_aupro_differs_from_the_anomalyclip_approximation(ref):
    # same data, two definitions: the exact MVTec area is not the paper's number
    exact = metrics.aupro(ref["anomaly_maps"], ref["masks"])
    assert 0 <= exact <= 1
    assert abs(exact - ref["pixel_aupro"]) > 1e-3
