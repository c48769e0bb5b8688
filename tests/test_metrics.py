"""Specification of zsadlab.metrics (the MVTec AUPRO definition of Bergmann et al., IJCV 2021;
fixtures/anomalyclip §5.6).

Hand-computed cases first, then agreement with scikit-learn and with slow, obviously-correct
reference implementations written here, then the error messages for bad inputs.
"""
import numpy as np
import pytest
import skimage.measure
import sklearn.metrics
import torch

from zsadlab import metrics


def strip(values, masks):
    """One image of one row: ``[1, 1, W]`` maps and masks from two flat lists."""
    return (np.asarray(values, dtype=np.float64)[None, None],
            np.asarray(masks, dtype=np.uint8)[None, None])


# ----------------------------------------------------------------------------- slow references
def brute_force_mvtec_aupro(maps, masks, fpr_limit=0.3):
    """The MVTec AUPRO straight from its definition: one threshold per distinct score, from high to low."""
    regions = [(i, labels == r)  # (image, region mask [H, W])
               for i, labels in enumerate(skimage.measure.label(m, connectivity=2) for m in masks)
               for r in range(1, labels.max() + 1)]
    normal = masks == 0
    curve = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        positive = maps >= t
        fpr = (positive & normal).sum() / normal.sum()
        pro = np.mean([(positive[i] & region).sum() / region.sum() for i, region in regions])
        curve.append((fpr, pro))
    area = 0.0
    for (f0, p0), (f1, p1) in zip(curve[:-1], curve[1:]):
        if f1 <= fpr_limit:
            area += (f1 - f0) * (p0 + p1) / 2
        elif f0 < fpr_limit:
            p_limit = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)
            area += (fpr_limit - f0) * (p0 + p_limit) / 2
    return area / fpr_limit


def official_recipe_aupro(maps, masks, fpr_limit=0.3):
    """Fixtures §5.6 as the official loop runs it: relabel every mask at every threshold."""
    fprs, pros = [], []
    low, high = maps.min(), maps.max()
    for th in np.arange(low, high, (high - low) / 200):
        positive = maps > th
        pro = [positive[i][region.coords[:, 0], region.coords[:, 1]].sum() / region.area
               for i, mask in enumerate(masks)
               for region in skimage.measure.regionprops(skimage.measure.label(mask))]
        fprs.append(np.logical_and(masks == 0, positive).sum() / (masks == 0).sum())
        pros.append(np.mean(pro))
    fprs, pros = np.array(fprs), np.array(pros)
    kept = fprs < fpr_limit
    fprs = fprs[kept]
    return sklearn.metrics.auc((fprs - fprs.min()) / (fprs.max() - fprs.min()), pros[kept])


def random_set(seed, n=3, size=12, levels=6):
    """Small maps with many tied scores and masks with several irregular regions."""
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, size, size)) < 0.25).astype(np.uint8)
    masks[0] = 0  # one normal image
    masks[1, 2:5, 2:5] = 1  # at least one region
    # integer levels, shifted up on anomalous pixels, so normal and region pixels tie often
    maps = (rng.integers(0, levels, (n, size, size)) + 2 * masks) / (levels - 1)
    return maps, masks


# ----------------------------------------------------------------------------- MVTec AUPRO
def test_mvtec_pro_curve_hand_computed_one_region():
    # region pixels score .9 and .5; normal pixels .8 .7 .4 .3 ... (8 normal pixels)
    maps, masks = strip([.9, .5, .8, .7, .4, .3, .2, .1, .05, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    fpr, pro = metrics.pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, .25, .25, .3])  # turns only at region scores
    np.testing.assert_allclose(pro, [0, .5, .5, 1, 1])
    # area: .25 * .5 + .05 * 1 = .175, divided by .3
    assert metrics.aupro(maps, masks) == pytest.approx(.175 / .3, abs=1e-12)


def test_mvtec_tied_scores_make_one_diagonal_step():
    # a region pixel and a normal pixel tie at .3025: no threshold separates them
    maps, masks = strip([1, .3025, .3025] + [0] * 7, [1, 1] + [0] * 8)
    fpr, pro = metrics.pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, .125, .3])
    np.testing.assert_allclose(pro, [0, .5, 1, 1])
    assert metrics.aupro(maps, masks) == pytest.approx((.125 * .75 + .175) / .3, abs=1e-12)


def test_mvtec_interpolates_linearly_at_the_fpr_limit():
    # normal pixels tie with the second region pixel at .5, crossing FPR .3 on a diagonal
    maps, masks = strip([1, .5] + [.5] * 4 + [0] * 4, [1, 1] + [0] * 8)  # FPR .5 after the tie
    fpr, pro = metrics.pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, .3])
    np.testing.assert_allclose(pro, [0, .5, .5 + .5 * .3 / .5])
    assert metrics.aupro(maps, masks) == pytest.approx(.3 * (.5 + .8) / 2 / .3, abs=1e-12)


def test_mvtec_regions_weigh_equally_whatever_their_size():
    # region A: 8 pixels, all found first; region B: 1 pixel, found last
    masks = [1] * 8 + [0] + [1] + [0] * 10
    maps, masks = strip([1.0] * 8 + [.5] + [0.0] + [.5] * 10, masks)
    assert metrics.aupro(maps, masks) == pytest.approx(.5, abs=1e-12)  # not 8/9


def test_mvtec_regions_are_8_connected_within_an_image():
    masks = np.array([[[1, 1, 0], [0, 0, 1], [0, 0, 0]]], np.uint8)  # (0,1) touches (1,2) diagonally
    maps = np.array([[[1, 1, .5], [.5, .5, 0], [.5, .5, .5]]])
    assert metrics.aupro(maps, masks) == pytest.approx(2 / 3, abs=1e-12)  # one region: 2 of 3


def test_mvtec_regions_do_not_join_across_images():
    masks = np.zeros((2, 2, 3), np.uint8)
    masks[0, 0] = 1  # 3 pixels in image 0, all found
    masks[1, 0, 0] = 1  # 1 pixel at the same place in image 1, missed
    maps = np.where(masks == 1, 1.0, .5)
    maps[1, 0, 0] = 0.0
    assert metrics.aupro(maps, masks) == pytest.approx(.5, abs=1e-12)  # not 3/4


def test_mvtec_perfect_detector_scores_one_and_never_more():
    maps, masks = random_set(0, n=4, size=40)
    perfect = masks + 0.01 * np.random.default_rng(1).random(masks.shape)
    assert metrics.aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert metrics.aupro(perfect, masks) <= 1.0


def test_mvtec_never_exceeds_one_where_anomalib_before_2_3_did():
    # 10 of the 96 normal pixels tie at .5, the rest at 0, all region pixels at .9: the
    # exact curve is (0, 0) -> (0, 1) -> (10/96, 1) -> (1, 1), with area .3 up to FPR .3
    masks = np.zeros((1, 10, 10), np.uint8)
    masks[0, :2, :2] = 1
    maps = np.where(masks == 1, .9, 0.0)
    maps[0, 5, :] = .5
    fpr, pro = metrics.pro_curve(maps, masks)
    area = np.trapezoid(pro, fpr)
    assert area == pytest.approx(.3)
    # anomalib <= 2.2 divided the area by the FPR endpoint of its curve instead of the limit;
    # threshold curves stop short of the limit here, at 10/96 (anomalib issue #3718)
    assert area / (10 / 96) > 1
    ours = metrics.aupro(maps, masks)
    assert ours == pytest.approx(1.0) and ours <= 1.0


def test_mvtec_regions_scored_below_every_normal_pixel_give_zero():
    maps, masks = random_set(0)
    assert metrics.aupro(np.where(masks == 1, -1.0, maps), masks) == 0.0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_mvtec_matches_brute_force_per_threshold_definition(seed, fpr_limit):
    maps, masks = random_set(seed)
    assert metrics.aupro(maps, masks, fpr_limit) == pytest.approx(
        brute_force_mvtec_aupro(maps, masks, fpr_limit), abs=1e-12)


def test_mvtec_matches_brute_force_with_float32_continuous_maps():
    rng = np.random.default_rng(7)
    masks = np.zeros((2, 16, 16), np.uint8)
    masks[1, 3:9, 4:7] = 1
    masks[1, 12:, 12:] = 1
    maps = (rng.random((2, 16, 16)) + masks).astype(np.float32)
    assert metrics.aupro(maps, masks) == pytest.approx(brute_force_mvtec_aupro(maps, masks), abs=1e-12)


def test_pro_curve_rises_in_both_axes_and_ends_at_the_limit():
    maps, masks = random_set(3, size=30)
    fpr, pro = metrics.pro_curve(maps, masks, fpr_limit=0.2)
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == 0.2
    assert (np.diff(fpr) >= 0).all() and (np.diff(pro) >= 0).all() and pro.max() <= 1


# ----------------------------------------------------------------------------- AnomalyCLIP AUPRO
def test_anomalyclip_aupro_hand_computed_rescales_the_fpr_range():
    # 200 thresholds 0, .005, ..., .995: 61 of them lie below .3025 (FPR 1/8, PRO 1),
    # 139 at or above it (FPR 0, PRO .5); rescaled FPRs are {0, 1}: area (1 + .5) / 2
    maps, masks = strip([1, .3025, .3025] + [0] * 7, [1, 1] + [0] * 8)
    thresholds, fpr, pro = metrics.anomalyclip_pro_curve(maps, masks)
    assert thresholds.size == 200
    assert (fpr == .125).sum() == 61 and (pro[fpr == 0] == .5).all()
    assert metrics.aupro(maps, masks, method="anomalyclip") == pytest.approx(.75, abs=1e-12)
    assert metrics.aupro(maps, masks) == pytest.approx(.8958333333333, abs=1e-12)  # MVTec differs


def test_anomalyclip_curve_is_nested_as_the_threshold_rises():
    maps, masks = random_set(4, size=30, levels=50)
    _, fpr, pro = metrics.anomalyclip_pro_curve(maps, masks)
    assert (np.diff(fpr) <= 0).all() and (np.diff(pro) <= 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_anomalyclip_matches_the_official_per_threshold_loop(seed):
    maps, masks = random_set(seed, levels=9)
    assert metrics.aupro(maps, masks, method="anomalyclip") == pytest.approx(
        official_recipe_aupro(maps, masks), abs=1e-12)


@pytest.mark.parametrize("method", metrics.AUPRO_METHODS)
def test_aupro_of_an_all_normal_set_is_a_clear_error(method):
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.raises(ValueError, match="all-normal"):
        metrics.aupro(maps, np.zeros((2, 8, 8)), method=method)


@pytest.mark.parametrize("method", metrics.AUPRO_METHODS)
def test_aupro_without_normal_pixels_is_a_clear_error(method):
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.raises(ValueError, match="needs normal pixels"):
        metrics.aupro(maps, np.ones((2, 8, 8)), method=method)


def test_aupro_rejects_unknown_method_and_bad_limit():
    maps, masks = random_set(0)
    with pytest.raises(ValueError, match="method must be one of"):
        metrics.aupro(maps, masks, method="anomalib")
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.aupro(maps, masks, fpr_limit=0)


# ----------------------------------------------------------------------------- AUROC, AP, F1
def test_image_and_pixel_auroc_ap_equal_scikit_learn():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(50), rng.integers(0, 2, 50)
    maps, masks = random_set(1)
    assert metrics.image_auroc(scores, labels) == sklearn.metrics.roc_auc_score(labels, scores)
    assert metrics.image_ap(scores, labels) == sklearn.metrics.average_precision_score(labels, scores)
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(
        sklearn.metrics.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert metrics.pixel_ap(maps, masks) == pytest.approx(
        sklearn.metrics.average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("levels", [3, 6, 1000])
def test_pixel_auroc_and_ap_from_two_sorts_equal_scikit_learn_with_and_without_ties(seed, levels):
    maps, masks = random_set(seed, n=4, size=16, levels=levels)
    maps = maps.astype(np.float32) if seed % 2 else maps
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(
        sklearn.metrics.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert metrics.pixel_ap(maps, masks) == pytest.approx(
        sklearn.metrics.average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_pixel_auroc_and_ap_hand_computed_with_a_tie():
    # anomalous .9 .5, normal .5 .1: pairs right 1 + 1 + 1 and one tie -> (3 + .5) / 4
    maps, masks = np.array([[[.9, .5], [.5, .1]]]), np.array([[[1, 1], [0, 0]]])
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(3.5 / 4)
    # t = .9: recall 1/2, precision 1; t = .5: recall 1, precision 2/3
    assert metrics.pixel_ap(maps, masks) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_torch_tensors_give_the_same_numbers_as_numpy():
    maps, masks = random_set(2)
    tmaps, tmasks = torch.from_numpy(maps), torch.from_numpy(masks).float()
    assert metrics.pixel_auroc(tmaps, tmasks) == metrics.pixel_auroc(maps, masks)
    for method in metrics.AUPRO_METHODS:
        assert metrics.aupro(tmaps, tmasks, method=method) == metrics.aupro(maps, masks, method=method)


def test_f1_max_hand_computed():
    # thresholds .9 .8 .3 .1 give F1 2/3, 1/2, 4/5, 2/3
    assert metrics.f1_max([.9, .8, .3, .1], [1, 0, 1, 0]) == pytest.approx(.8)


def test_f1_max_is_the_best_threshold_for_images_and_pooled_pixels():
    maps, masks = random_set(5)
    best = max(sklearn.metrics.f1_score(masks.ravel(), maps.ravel() >= t) for t in np.unique(maps))
    assert metrics.f1_max(maps, masks) == pytest.approx(best, abs=1e-12)


def test_roc_curve_returns_scikit_learn_points():
    maps, masks = random_set(6)
    fpr, tpr = metrics.roc_curve(maps, masks)
    ref_fpr, ref_tpr, _ = sklearn.metrics.roc_curve(masks.ravel(), maps.ravel())
    np.testing.assert_array_equal(fpr, ref_fpr)
    np.testing.assert_array_equal(tpr, ref_tpr)


# ----------------------------------------------------------------------------- pixel samples for plots
def test_pixel_sample_draws_per_image_pixels_with_their_labels():
    maps, masks = random_set(3, n=4, size=10)
    scores, labels = metrics.pixel_sample(maps, masks, per_image=7, seed=0)
    assert scores.shape == labels.shape == (4 * 7,) and labels.dtype == bool
    for image in range(4):  # each drawn pixel is a pixel of its own image, with its own label
        pairs = set(zip(maps[image].ravel().tolist(), masks[image].ravel().astype(bool).tolist()))
        drawn = zip(scores[7 * image:7 * (image + 1)].tolist(), labels[7 * image:7 * (image + 1)].tolist())
        assert set(drawn) <= pairs


def test_pixel_sample_is_seeded_and_takes_every_pixel_when_asked_for_more():
    maps, masks = random_set(4, n=2, size=6)
    first = metrics.pixel_sample(maps, masks, per_image=5, seed=1)
    np.testing.assert_array_equal(first[0], metrics.pixel_sample(maps, masks, per_image=5, seed=1)[0])
    assert not np.array_equal(first[0], metrics.pixel_sample(maps, masks, per_image=5, seed=2)[0])
    scores, labels = metrics.pixel_sample(maps, masks, per_image=10_000, seed=0)
    assert sorted(scores.tolist()) == sorted(maps.ravel().tolist()) and labels.sum() == masks.sum()


def test_pixel_sample_roc_auc_estimates_the_pooled_value():
    rng = np.random.default_rng(0)
    masks = (rng.random((20, 64, 64)) < 0.1).astype(np.uint8)
    maps = rng.normal(size=masks.shape) + masks  # AUROC about 0.76
    sample = metrics.pixel_sample(maps, masks, per_image=1000, seed=0)
    assert sklearn.metrics.roc_auc_score(sample[1], sample[0]) == pytest.approx(metrics.pixel_auroc(maps, masks),
                                                                                 abs=0.02)


# ----------------------------------------------------------------------------- bad inputs
def test_auroc_with_a_single_class_says_both_are_needed():
    with pytest.raises(ValueError, match="needs both normal"):
        metrics.image_auroc([.1, .2, .3], [1, 1, 1])


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        metrics.image_ap([.1, np.nan], [0, 1])


def test_non_binary_masks_are_rejected_with_a_hint():
    maps, masks = random_set(0)
    with pytest.raises(ValueError, match="binary"):
        metrics.pixel_auroc(maps, masks * 255)


@pytest.mark.parametrize("fn", [metrics.pixel_auroc, metrics.pixel_ap, metrics.aupro, metrics.pro_curve])
def test_pixel_metrics_reject_mismatched_or_channel_shapes(fn):
    maps, masks = random_set(0)
    with pytest.raises(ValueError, match="same shape"):
        fn(maps, masks[:, :-1])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        fn(maps[:, None], masks[:, None])


def test_image_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="same shape"):
        metrics.image_auroc([.1, .2, .3], [0, 1])


# ----------------------------------------------------------------------------- the registry
def test_registry_names_every_table_metric_with_its_level():
    levels = {name: metrics.get_metric(name).level for name in metrics.METRICS}
    assert levels["image_auroc"] == levels["image_ap"] == levels["image_f1_max"] == "image"
    assert levels["pixel_auroc"] == levels["aupro_mvtec"] == levels["aupro_anomalyclip"] == "pixel"
    assert metrics.get_metric("image_auroc").function([0.1, 0.9], [0, 1]) == 1.0


def test_a_new_metric_is_one_registration(monkeypatch):
    monkeypatch.setitem(metrics.METRICS, "dummy", None)  # restored afterwards
    metrics.register_metric("dummy", "image", lambda scores, labels: 0.5)
    assert metrics.get_metric("dummy").function([0.0], [0]) == 0.5
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        metrics.get_metric("nope")
    with pytest.raises(ValueError, match="level"):
        metrics.register_metric("bad", "voxel", lambda s, l: 0.0)


def test_undefined_is_its_own_error_and_nan_scores_are_not_undefined():
    with pytest.raises(metrics.UndefinedMetricError):
        metrics.image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(metrics.UndefinedMetricError):
        metrics.aupro(np.zeros((1, 4, 4)) + np.arange(16).reshape(1, 4, 4), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError) as err:
        metrics.image_auroc([np.nan, 0.2], [0, 1])
    assert not isinstance(err.value, metrics.UndefinedMetricError)


def test_f1_max_threshold_is_where_the_best_f1_is_reached():
    from zsadlab.metrics import f1_max, f1_max_threshold

    scores, labels = np.array([0.1, 0.4, 0.35, 0.8, 0.7]), np.array([0, 0, 1, 1, 1])
    threshold = f1_max_threshold(scores, labels)
    predicted = scores >= threshold
    tp = int((predicted & (labels == 1)).sum())
    f1 = 2 * tp / (predicted.sum() + labels.sum())
    assert threshold == 0.35 and f1 == pytest.approx(f1_max(scores, labels))


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_aupro_of_constant_maps_is_undefined_under_both_methods(value):
    from zsadlab.metrics import UndefinedMetricError

    masks = np.zeros((2, 16, 16))
    masks[0, 4:8, 4:8] = 1
    for method in ("mvtec", "anomalyclip"):
        with pytest.raises(UndefinedMetricError, match="constant"):
            metrics.aupro(np.full((2, 16, 16), value), masks, method=method)
