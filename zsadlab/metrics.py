"""Anomaly detection metrics: image/pixel AUROC and AP, F1-max and AUPRO.

Every function takes numpy arrays or torch tensors and returns a Python float
(or numpy arrays for curves). Conventions (MVTec AD: Bergmann et al., IJCV 2021; fixtures §5.6):

- image level: ``scores`` ``[N]`` (higher = more anomalous), ``labels`` ``[N]`` in {0, 1};
- pixel level: ``maps`` ``[N, H, W]`` and ``masks`` ``[N, H, W]`` in {0, 1}; all pixels of
  all images are pooled, as the official AnomalyCLIP ``test.py`` does.

AUPRO comes in two flavours, chosen with ``method``:

- ``"mvtec"`` (default): the exact MVTec AD definition (Bergmann et al., IJCV 2021), see
  :func:`pro_curve`;
- ``"anomalyclip"``: the 200-threshold approximation of the official AnomalyCLIP
  ``metrics.cal_pro_score`` (itself from cflow-ad), needed to compare with the paper's
  tables like for like, see :func:`anomalyclip_pro_curve`.

Bad inputs raise ``ValueError`` saying what is wrong and what to pass instead. A metric that
has no value on valid inputs (one label only, no anomalous pixel) raises the subclass
:class:`UndefinedMetricError`, so that a result table can mark that cell undefined while
any other error (NaN scores, wrong shapes) still stops the run.

:data:`METRICS` is the registry the result tables choose their columns from, by name:
each :class:`Metric` is image level (``f(scores [N], labels [N])``) or pixel level
(``f(maps [N, H, W], masks [N, H, W])``). Adding a metric = a function + one
:func:`register_metric` call.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.ndimage
import sklearn.metrics
import torch

AUPRO_METHODS = ("mvtec", "anomalyclip")
ANOMALYCLIP_STEPS = 200  # cal_pro_score(max_step=200) in the official metrics.py

# 8-connectivity inside each image, never across images of the stack: [3, 3, 3]
_CONNECT_8_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_CONNECT_8_PER_IMAGE[1] = True


class UndefinedMetricError(ValueError):
    """The metric has no value on these (valid) inputs, e.g. a set with one label only."""


# ----------------------------------------------------------------------------- input checks
def _as_array(x, name: str) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or sequence) as a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError(f"{name} is empty; pass at least one value.")
    return x


def _scores(x, name: str) -> np.ndarray:
    """Return finite anomaly scores as a float array (float32 kept, other types to float64)."""
    x = _as_array(x, name)
    if x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must hold numeric anomaly scores, got dtype {x.dtype}.")
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; pass finite anomaly scores.")
    return x


def _binary(x, name: str) -> np.ndarray:
    """Return 0/1 labels or masks as a bool array."""
    x = _as_array(x, name)
    if x.dtype != bool:
        # integers are binary iff their range is [0, 1]: two reductions, no full-size temporaries
        integer = np.issubdtype(x.dtype, np.integer)
        binary = (x.min() >= 0 and x.max() <= 1) if integer else ((x == 0) | (x == 1)).all()
        if not binary:
            found = np.unique(x)[:5]
            raise ValueError(
                f"{name} must be binary (0 = normal, 1 = anomalous), found values {found}...; "
                "threshold or rescale it first (e.g. mask > 0 for 0/255 PNG masks).")
        x = x == 1
    return x


def _same_shape(scores: np.ndarray, labels: np.ndarray, names: str) -> None:
    if scores.shape != labels.shape:
        raise ValueError(f"{names} must have the same shape, got {scores.shape} and {labels.shape}.")


def _image_inputs(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Check image-level inputs: scores [N] and labels [N]."""
    scores, labels = _scores(scores, "scores"), _binary(labels, "labels")
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D [N] (one score per image), got shape {scores.shape}.")
    _same_shape(scores, labels, "scores and labels")
    return scores, labels


def _pixel_inputs(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """Check pixel-level inputs: maps [N, H, W] and masks [N, H, W]."""
    maps, masks = _scores(maps, "maps"), _binary(masks, "masks")
    for name, x in (("maps", maps), ("masks", masks)):
        if x.ndim != 3:
            raise ValueError(
                f"{name} must be [N, H, W], got shape {x.shape}; "
                "squeeze a channel axis ([N, 1, H, W]) or add a batch axis ([H, W]).")
    _same_shape(maps, masks, "maps and masks")
    return maps, masks


def _both_classes(labels: np.ndarray, what: str) -> None:
    if labels.all() or not labels.any():
        only = "anomalous (1)" if labels.all() else "normal (0)"
        raise UndefinedMetricError(
            f"{what} needs both normal (0) and anomalous (1) samples, but all are {only}; "
            "evaluate on a set that contains both.")


# ----------------------------------------------------------------------------- image and pixel
def image_auroc(scores, labels) -> float:
    """Area under the ROC curve of image scores ``[N]`` against labels ``[N]`` (sklearn)."""
    scores, labels = _image_inputs(scores, labels)
    _both_classes(labels, "AUROC")
    return float(sklearn.metrics.roc_auc_score(labels, scores))


def image_ap(scores, labels) -> float:
    """Average precision of image scores ``[N]`` against labels ``[N]`` (sklearn)."""
    scores, labels = _image_inputs(scores, labels)
    _both_classes(labels, "AP")
    return float(sklearn.metrics.average_precision_score(labels, scores))


def _scores_by_label(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the anomalous and of the normal pixels, each sorted ascending: ``[P]``, ``[Q]``.

    Two plain sorts, no index arrays: what the pooled pixel AUROC and AP need, in about a third of
    the memory and time of scikit-learn's argsort of every pixel.
    """
    return np.sort(maps[masks]), np.sort(maps[~masks])


def pixel_auroc(maps, masks) -> float:
    """AUROC of all pixels of all maps ``[N, H, W]`` pooled against ``masks`` (fixtures §5.6).

    The scikit-learn value (``roc_auc_score`` of the raveled pixels, ties as diagonal ROC
    segments) computed as the Mann-Whitney statistic: the fraction of (anomalous, normal) pixel
    pairs ranked right, ties counting one half, summed in integers. Equal to scikit-learn's up
    to float rounding.
    """
    maps, masks = _pixel_inputs(maps, masks)
    _both_classes(masks, "pixel AUROC")
    positive, negative = _scores_by_label(maps, masks)  # [P], [Q]
    below = np.searchsorted(negative, positive, "left").sum(dtype=np.int64)  # pairs ranked right
    below_or_tied = np.searchsorted(negative, positive, "right").sum(dtype=np.int64)
    return float((below + below_or_tied) / (2 * positive.size * negative.size))


def pixel_ap(maps, masks) -> float:
    """Average precision of all pixels of all maps ``[N, H, W]`` pooled against ``masks``.

    scikit-learn's definition, ``sum_t (R_t - R_t-1) P_t`` over the distinct scores t (a pixel
    is positive when it scores ``>= t``); only scores of anomalous pixels change the recall, so
    the sum runs over those. Equal to ``average_precision_score`` up to float rounding.
    """
    maps, masks = _pixel_inputs(maps, masks)
    _both_classes(masks, "pixel AP")
    positive, negative = _scores_by_label(maps, masks)  # [P], [Q]
    thresholds, first = np.unique(positive, return_index=True)  # [T], ascending
    true_positives = positive.size - first  # [T] anomalous pixels scoring >= t
    false_positives = negative.size - np.searchsorted(negative, thresholds, "left")  # [T]
    recall_steps = np.diff(np.append(first, positive.size)) / positive.size  # [T]
    return float(np.sum(recall_steps * true_positives / (true_positives + false_positives)))


def _f1_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(f1 [T], thresholds [T])`` over the precision-recall curve's thresholds (pixels pooled)."""
    scores, labels = _scores(scores, "scores"), _binary(labels, "labels")
    _same_shape(scores, labels, "scores and labels")
    _both_classes(labels, "F1-max")
    precision, recall, thresholds = sklearn.metrics.precision_recall_curve(labels.ravel(), scores.ravel())
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], np.finfo(float).tiny)
    return f1, thresholds


def f1_max(scores, labels) -> float:
    """Best F1 over all thresholds of the precision-recall curve.

    ``scores`` and ``labels`` may have any shape as long as they match, so one function
    serves both levels: image scores ``[N]`` with labels ``[N]``, or maps ``[N, H, W]`` with
    masks ``[N, H, W]`` (pixels pooled). Thresholds where precision and recall are both 0
    count as F1 = 0.
    """
    return float(_f1_curve(scores, labels)[0].max())


def f1_max_threshold(scores, labels) -> float:
    """The score threshold (``score >= t`` is anomalous) at which :func:`f1_max` is reached.

    Chosen on labelled data, so on a test set it is an oracle: a deployed detector must take
    its threshold from data it is not evaluated on (notebook 10).
    """
    f1, thresholds = _f1_curve(scores, labels)
    return float(thresholds[np.argmax(f1)])


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)`` for plots; any matching shapes (pixels are pooled)."""
    scores, labels = _scores(scores, "scores"), _binary(labels, "labels")
    _same_shape(scores, labels, "scores and labels")
    _both_classes(labels, "ROC curve")
    fpr, tpr, _ = sklearn.metrics.roc_curve(labels.ravel(), scores.ravel())
    return fpr, tpr


def pixel_sample(maps, masks, per_image: int = 1000, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of pixels for pooled curves in plots: ``(scores, labels)`` ``[N * k]``.

    ``maps`` and ``masks`` ``[N, H, W]``; ``k = min(per_image, H * W)`` pixels are drawn without
    replacement, uniformly, from every image (``np.random.default_rng(seed)``; ``seed`` is an int
    or a sequence such as ``(seed, class index)``). Every image has H×W pixels, so the samples of
    the classes of a dataset, concatenated, are a stratified uniform sample of its pooled pixels:
    ``roc_curve(*sample)`` draws the pooled ROC without holding every pixel. Table numbers are
    never computed from a sample.
    """
    maps, masks = _pixel_inputs(maps, masks)
    n, pixels = maps.shape[0], maps.shape[1] * maps.shape[2]
    k = min(int(per_image), pixels)
    if k < 1:
        raise ValueError(f"per_image must be at least 1, got {per_image}.")
    rng = np.random.default_rng(seed)
    chosen = np.stack([rng.choice(pixels, size=k, replace=False) for _ in range(n)])  # [N, k] flat indices
    rows = np.arange(n)[:, None]  # [N, 1]
    return maps.reshape(n, pixels)[rows, chosen].ravel(), masks.reshape(n, pixels)[rows, chosen].ravel()


# ----------------------------------------------------------------------------- AUPRO, MVTec
def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the connected regions of every mask, numbered 1..R over the whole stack.

    8-connectivity inside each image (skimage.measure.label's default, as the official code
    uses), never across images. Returns ``labels`` ``[N, H, W]`` int32 (0 = normal pixel) and
    R. Raises ``ValueError`` when there is no region or no normal pixel: PRO or FPR would be
    undefined.
    """
    labels, n_regions = scipy.ndimage.label(masks, structure=_CONNECT_8_PER_IMAGE)
    if n_regions == 0:
        raise UndefinedMetricError("AUPRO needs at least one anomalous pixel in masks, found none: PRO is "
                         "undefined on an all-normal set. Evaluate such a set with image metrics only.")
    if masks.all():
        raise UndefinedMetricError("AUPRO needs normal pixels (mask 0) to measure a false-positive rate; "
                         "every pixel of masks is anomalous.")
    return labels, n_regions


def _score_floor(normal_scores: np.ndarray, fpr_limit: float) -> float:
    """A score low enough that thresholding there already gives an FPR above ``fpr_limit``.

    Only pixels scoring at least this much can shape the PRO curve below the limit, so only
    they need sorting. It is the k-th largest normal score with k = ⌊limit·N⌋ + 2, one more
    than needed, so that float rounding in limit·N can never leave the curve short of the
    limit (the part past the limit is cut off by the interpolation anyway).
    """
    n = normal_scores.size
    k = min(n, int(fpr_limit * n) + 2)
    return np.partition(normal_scores, n - k)[n - k]


def _pro_steps(maps, labels, normal, n_regions, floor) -> tuple[np.ndarray, np.ndarray]:
    """Distinct scores ``≥ floor`` of region pixels, high to low, and the PRO at each.  # [K], [K]

    Each region pixel adds 1/(|r|·R) to the PRO (Bergmann et al., 2021): cumulative sums over the sorted
    scores, keeping the last of tied scores because no threshold can split a tie.
    """
    region = ~normal  # [N, H, W]
    areas = np.bincount(labels[region], minlength=n_regions + 1)  # [R+1], areas[0] = 0
    weights = 1.0 / (np.maximum(areas, 1) * n_regions)  # [R+1]
    above = region & (maps >= floor)
    scores, owners = maps[above], labels[above]  # [M] region pixels that matter
    order = np.argsort(scores)[::-1]  # high to low
    scores = scores[order]
    # many small weights may add up to 1 plus a few ulps
    pro = np.minimum(np.cumsum(weights[owners[order]]), 1.0)  # [M]
    last_of_ties = np.diff(scores, append=-np.inf) != 0  # [M], True where the next score is lower
    return scores[last_of_ties], pro[last_of_ties]


def _exact_pro_curve(maps: np.ndarray, masks: np.ndarray, fpr_limit: float):
    """The vertices ``(fpr, pro)`` of the exact PRO curve from (0, 0) to past ``fpr_limit``.

    A threshold t makes every pixel scoring ≥ t positive; each normal pixel adds
    1/N_normal to the FPR, each region pixel 1/(|r|·R) to the PRO. Lowering t from the top,
    normal pixels only move the curve to the right, so it turns only at the scores of region
    pixels: at each such score t it arrives at (FPR(> t), PRO(> t)) and steps, in one
    straight segment (a threshold cannot split tied scores), to (FPR(≥ t), PRO(≥ t)).
    FPRs are counts of normal scores, by binary search in the sorted normal scores. This is
    the curve of "sort all scores, cumulative sums, keep the last of ties", without its
    collinear vertices, and only the scores above :func:`_score_floor` are ever sorted.
    """
    labels, n_regions = _regions(masks)  # [N, H, W]
    normal = labels == 0  # [N, H, W]
    n_normal = int(normal.sum())
    normal_scores = maps[normal]  # [N_normal]
    floor = _score_floor(normal_scores, fpr_limit)
    normal_scores = np.sort(normal_scores[normal_scores >= floor])  # [M_normal], low to high
    turns, pro_at = _pro_steps(maps, labels, normal, n_regions, floor)  # [K], [K]
    pro_levels = np.append(0.0, pro_at)  # [K+1] PRO before the first turn and after each
    fpr_above = (normal_scores.size - np.searchsorted(normal_scores, turns, "right")) / n_normal
    fpr_at = (normal_scores.size - np.searchsorted(normal_scores, turns, "left")) / n_normal
    # (0, 0), the two vertices of every turn, and the floor, where the FPR is past the limit
    fpr = np.concatenate([[0.0], np.stack([fpr_above, fpr_at], axis=1).ravel(),
                          [normal_scores.size / n_normal]])
    pro = np.concatenate([[0.0], np.stack([pro_levels[:-1], pro_at], axis=1).ravel(),
                          pro_levels[-1:]])
    moves = np.append(True, (np.diff(fpr) > 0) | (np.diff(pro) > 0))  # drop repeated vertices
    return fpr[moves], pro[moves]


def _cut_at(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float):
    """The curve up to ``fpr_limit``, ending with a point interpolated linearly at the limit."""
    after = int(np.searchsorted(fpr, fpr_limit, side="left"))  # first vertex with fpr >= limit
    before = after - 1  # fpr[0] = 0 < limit, so it exists
    slope = (pro[after] - pro[before]) / (fpr[after] - fpr[before])
    pro_at_limit = pro[before] + slope * (fpr_limit - fpr[before])
    return np.append(fpr[:after], fpr_limit), np.append(pro[:after], pro_at_limit)


def _check_fpr_limit(fpr_limit: float) -> float:
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}; the usual value is 0.3.")
    return float(fpr_limit)


def pro_curve(maps, masks, fpr_limit: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """The exact MVTec PRO curve ``(fpr, pro)`` from (0, 0) up to ``fpr_limit`` (Bergmann et al., 2021).

    ``maps`` ``[N, H, W]``, ``masks`` ``[N, H, W]`` in {0, 1}. Regions are the 8-connected
    components of each mask; PRO is the mean over all regions of all images of the fraction
    of each region above the threshold; FPR is pooled over all normal pixels. The last point
    is interpolated linearly at exactly ``fpr_limit``. Only scores that can matter below the
    limit are sorted, so this is fast on full test sets.
    """
    maps, masks = _pixel_inputs(maps, masks)
    fpr_limit = _check_fpr_limit(fpr_limit)
    return _cut_at(*_exact_pro_curve(maps, masks, fpr_limit), fpr_limit)


# ----------------------------------------------------------------------------- AUPRO, AnomalyCLIP
def anomalyclip_pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds, fpr, pro)`` of the official AnomalyCLIP ``cal_pro_score``, before any cut.

    Fixtures §5.6, steps 1–3: thresholds ``np.arange(min, max, (max - min) / 200)`` over all
    maps (200, sometimes 201 through float rounding); a pixel is positive when ``> th``; PRO
    is the mean over every region of every image (8-connected, as ``skimage.measure.label``
    finds them) of the positive fraction of the region; FPR is pooled over all normal pixels.

    The official loop labels every mask again at each threshold; here regions are labelled
    once and each threshold only counts: a pixel is positive for exactly the thresholds below
    its score, so a histogram of "how many thresholds lie below" per region, summed from the
    top, gives every count at once. The numbers are the official ones.
    """
    maps, masks = _pixel_inputs(maps, masks)
    low, high = maps.min(), maps.max()
    if low == high:
        raise UndefinedMetricError("maps are constant; the AnomalyCLIP AUPRO needs at least two distinct scores.")
    thresholds = np.arange(low, high, (high - low) / ANOMALYCLIP_STEPS)  # [T]
    labels, n_regions = _regions(masks)  # [N, H, W]
    n_t = thresholds.size
    below = np.searchsorted(thresholds, maps.ravel(), side="left")  # [P] thresholds < score
    hist = np.bincount(labels.ravel() * (n_t + 1) + below, minlength=(n_regions + 1) * (n_t + 1))
    # at_least[r, k] = pixels of region r (0 = normal) with at least k thresholds below them
    at_least = np.cumsum(hist.reshape(n_regions + 1, n_t + 1)[:, ::-1], axis=1)[:, ::-1]
    areas, positives = at_least[:, 0], at_least[:, 1:]  # [R+1], [R+1, T] positive at th_i
    pro = (positives[1:] / areas[1:, None]).mean(axis=0)  # [T]
    fpr = positives[0] / areas[0]  # [T]
    return thresholds, fpr, pro


def _anomalyclip_aupro(maps, masks, fpr_limit: float) -> float:
    """Fixtures §5.6 steps 4–6: keep FPR < limit, min–max rescale those FPRs, trapezoid."""
    _, fpr, pro = anomalyclip_pro_curve(maps, masks)
    kept = fpr < fpr_limit
    fpr, pro = fpr[kept], pro[kept]
    if np.unique(fpr).size < 2:
        raise UndefinedMetricError(f"fewer than two distinct FPRs below {fpr_limit} among the "
                         f"{ANOMALYCLIP_STEPS} thresholds: the AnomalyCLIP AUPRO is undefined here.")
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    return float(sklearn.metrics.auc(fpr, pro))


def aupro(maps, masks, fpr_limit: float = 0.3, method: str = "mvtec") -> float:
    """Area under the PRO curve up to ``fpr_limit``, normalised to [0, 1].

    ``method="mvtec"`` (default): exact area under :func:`pro_curve` divided by
    ``fpr_limit`` (Bergmann et al., 2021). It never exceeds 1, unlike anomalib before 2.3, which divided by
    the FPR endpoint of its averaged curve instead of the limit.
    ``method="anomalyclip"``: the official AnomalyCLIP number (fixtures §5.6), for comparing
    with the paper. It divides by the FPR range it covered, not by the limit, so it is not
    the MVTec value.

    Raises ``ValueError`` for a set without anomalous pixels (PRO is undefined there), and
    :class:`UndefinedMetricError` for constant maps under both methods: they rank nothing (the
    official thresholds ``np.arange(min, max, 0)`` do not exist), so neither method gives a number.
    """
    if method not in AUPRO_METHODS:
        raise ValueError(f"method must be one of {AUPRO_METHODS}, got {method!r}.")
    fpr_limit = _check_fpr_limit(fpr_limit)
    maps, masks = _pixel_inputs(maps, masks)
    if maps.size and maps.min() == maps.max():
        raise UndefinedMetricError("maps are constant: AUPRO is undefined (no threshold separates any pixels).")
    if method == "anomalyclip":
        return _anomalyclip_aupro(maps, masks, fpr_limit)
    fpr, pro = pro_curve(maps, masks, fpr_limit)
    return float(np.trapezoid(pro, fpr) / fpr_limit)


# ----------------------------------------------------------------------------- the registry
LEVELS = ("image", "pixel")


@dataclass(frozen=True)
class Metric:
    """A named metric of one level: image ``f(scores [N], labels [N])`` or pixel ``f(maps, masks)``."""

    name: str
    level: str
    function: Callable[..., float]


METRICS: dict[str, Metric] = {}


def register_metric(name: str, level: str, function: Callable[..., float]) -> Metric:
    """Add a metric to :data:`METRICS` (replacing one of the same name) and return it."""
    if level not in LEVELS:
        raise ValueError(f"metric level must be one of {LEVELS}, got {level!r}")
    METRICS[name] = Metric(name, level, function)
    return METRICS[name]


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {sorted(METRICS)}")
    return METRICS[name]


register_metric("image_auroc", "image", image_auroc)
register_metric("image_ap", "image", image_ap)
register_metric("image_f1_max", "image", f1_max)
register_metric("pixel_auroc", "pixel", pixel_auroc)
register_metric("pixel_ap", "pixel", pixel_ap)
register_metric("pixel_f1_max", "pixel", f1_max)
register_metric("aupro_mvtec", "pixel", functools.partial(aupro, method="mvtec"))
register_metric("aupro_anomalyclip", "pixel", functools.partial(aupro, method="anomalyclip"))
