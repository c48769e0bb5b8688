"""Specification of the bounded-memory evaluation: one class's maps at a time, the same numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zsadlab import metrics
from zsadlab.data import AnomalyDataset
from zsadlab.engine import METRIC_COLUMNS, evaluate, predict_dataset
from zsadlab.engine.evaluation import class_metrics, class_predictions, pixel_inputs

FUNCTIONS = {"image_auroc": metrics.image_auroc, "image_ap": metrics.image_ap,
             "pixel_auroc": metrics.pixel_auroc, "pixel_ap": metrics.pixel_ap,
             "aupro_mvtec": lambda m, k: metrics.aupro(m, k, method="mvtec"),
             "aupro_anomalyclip": lambda m, k: metrics.aupro(m, k, method="anomalyclip")}


class StubModel(torch.nn.Module):
    """Maps = the image's channel mean (a fixed function of the pixels); score = the map's maximum.
    Records the classes of every ``predict`` call."""

    def __init__(self, with_maps: bool = True):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.with_maps, self.calls = with_maps, []

    def predict(self, images, class_names):
        self.calls.append(set(class_names))
        maps = images.mean(dim=1) * self.weight  # [B, S, S]
        return maps.amax(dim=(1, 2)), maps if self.with_maps else None


@pytest.fixture
def root(tmp_path, write_image, write_mask):
    """bottle and cable with masks (3 normal + 3 anomalous each), wood without pixel labels."""
    root = tmp_path / "root"
    for cls in ("bottle", "cable", "wood"):
        for i in range(3):
            write_image(root / f"{cls}/test/good/{i:03d}.png")
            write_image(root / f"{cls}/test/crack/{i:03d}.png")
            if cls != "wood":
                write_mask(root / f"{cls}/ground_truth/crack/{i:03d}_mask.png", box=(i, 6 + i, 2, 5 + 2 * i))
    return root


def test_evaluate_gives_identical_numbers_to_one_big_prediction_restricted_per_class(root):
    dataset = AnomalyDataset(root, "test", image_size=16)
    table = evaluate(StubModel(), dataset, batch_size=4, progress=False)
    pooled = predict_dataset(StubModel(), dataset, batch_size=5, progress=False)  # every class at once
    names = np.array(pooled["class_names"])
    for row in table.rows:
        mine = names == row["class"]
        expected = {"image_auroc": metrics.image_auroc(pooled["scores"][mine], pooled["labels"][mine]),
                    "image_ap": metrics.image_ap(pooled["scores"][mine], pooled["labels"][mine])}
        if row["class"] == "wood":  # no pixel labels: pixel cells undefined
            assert all(math.isnan(row[c]) for c in METRIC_COLUMNS if c not in expected)
        else:
            maps, masks = pooled["maps"][mine], pooled["masks"][mine]
            expected.update({c: FUNCTIONS[c](maps, masks) for c in METRIC_COLUMNS if c not in expected})
        assert {c: row[c] for c in expected} == expected  # identical, not merely close


def test_evaluate_predicts_one_class_at_a_time(root):
    model = StubModel()
    evaluate(model, AnomalyDataset(root, "test", image_size=16), batch_size=4, progress=False)
    assert all(len(classes) == 1 for classes in model.calls)
    seen = [next(iter(c)) for c in model.calls]
    assert seen == sorted(seen)  # each class finished before the next starts


def test_class_predictions_yield_each_class_with_only_its_images(root):
    dataset = AnomalyDataset(root, "test", image_size=16)
    for class_name, pred in class_predictions(StubModel(), dataset, batch_size=4, progress=False):
        assert set(pred["class_names"]) == {class_name} and len(pred["paths"]) == 6
        assert pred["maps"].shape == pred["masks"].shape == (6, 16, 16)


def test_predict_dataset_returns_the_documented_arrays(root):
    pred = predict_dataset(StubModel(), AnomalyDataset(root, "test", image_size=16), batch_size=4, progress=False)
    assert pred["scores"].dtype == np.float32 and pred["maps"].dtype == np.float32
    assert pred["masks"].dtype == np.uint8 and pred["labels"].dtype == np.int64 and pred["has_mask"].dtype == bool
    assert pred["labels"].tolist() == [1, 1, 1, 0, 0, 0] * 3
    assert pred["has_mask"].tolist() == [True] * 12 + [False] * 6
    np.testing.assert_allclose(pred["scores"], pred["maps"].max(axis=(1, 2)))
    assert predict_dataset(StubModel(with_maps=False), AnomalyDataset(root, "test", image_size=16),
                           progress=False)["maps"] is None


def test_pixel_inputs_are_the_arrays_themselves_when_every_image_has_pixel_labels(root):
    pred = predict_dataset(StubModel(), AnomalyDataset(root, "test", image_size=16), progress=False)
    partial = pixel_inputs(pred)
    assert partial[0].shape == (12, 16, 16)  # wood has no pixel labels
    bottle = predict_dataset(StubModel(), AnomalyDataset(root, "test", ["bottle"], image_size=16), progress=False)
    maps, masks = pixel_inputs(bottle)
    assert maps is bottle["maps"] and masks is bottle["masks"]  # no copy
    wood = predict_dataset(StubModel(), AnomalyDataset(root, "test", ["wood"], image_size=16), progress=False)
    assert pixel_inputs(wood) is None and math.isnan(class_metrics(wood, ["pixel_auroc"])["pixel_auroc"])
