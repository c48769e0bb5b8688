"""From a score to a decision: thresholds calibrated on normal images, with a false-alarm guarantee.

Zero-shot users have no labelled anomalies, so the F1-optimal threshold of a benchmark (which needs
them) is not available; what they have is a few normal images. Split-conformal calibration (Vovk et
al. 2005; Angelopoulos & Bates 2021, "A gentle introduction to conformal prediction", §1) turns the
scores ``s_1..s_n`` of ``n`` held-out normal images into the threshold

    t = the k-th smallest of s_1..s_n,  k = ceil((n + 1)(1 - alpha))

and flags an image when its score is **above** ``t``. If a new normal image is *exchangeable* with
the ``n`` calibration images, ``P(score > t) <= alpha`` - a finite-sample, distribution-free bound:
its rank among the n + 1 scores is uniform, and at most ``n + 1 - k <= (n + 1) alpha`` of the ranks
lie above ``t``.

What it assumes: exchangeability - the calibration images and the images you will judge come from
the same camera, product, process and preprocessing (and, here, the same method, config, checkpoint,
reference images and class name; :meth:`Calibration.check_model` refuses anything else). A new
batch, a new lighting or a drifted process breaks it, and nothing in the scores tells you so.

What it does not promise: a miss rate. It controls false alarms on normal images only; how many
anomalies score above ``t`` depends on the method and the defects, and can be anything. The
guarantee is marginal (on average over calibration sets), not for the one set you drew.

``n`` normal images allow ``alpha >= 1 / (n + 1)`` (else ``k > n``): ``alpha = 0.01`` needs 99.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import DatasetError
from .data.download import sha256_of
from .engine.building import device_of, method_of
from .engine.prediction import model_input, predictor_for, user_images
from .errors import InputError
from .methods import Method
from .utils import write_json_atomic

FORMAT = "zsadlab.calibration/1"


def exact_alpha(alpha) -> Fraction:
    """``alpha`` as an exact fraction: a float by its shortest decimal (``0.1`` is 1/10, not the binary
    value just above it), so the rank below is the one the user's decimal number asks for."""
    value = Fraction(repr(alpha)) if isinstance(alpha, float) else Fraction(alpha)
    if not 0 < value < 1:
        raise InputError(f"alpha must be between 0 and 1 (a false-alarm rate), got {alpha}")
    return value


def smallest_alpha(n: int) -> Fraction:
    """The smallest false-alarm rate ``n`` calibration images allow: ``1 / (n + 1)``."""
    return Fraction(1, n + 1)


def normal_images_needed(alpha) -> int:
    """The fewest normal images that allow ``alpha``: the smallest ``n`` with ``1 / (n + 1) <= alpha``."""
    return math.ceil(1 / exact_alpha(alpha)) - 1


def conformal_rank(n: int, alpha) -> int:
    """``k = ceil((n + 1)(1 - alpha))``, in integer/fraction arithmetic; ``ValueError`` when ``k > n``."""
    value = exact_alpha(alpha)
    if value < smallest_alpha(n):
        raise InputError(f"{n} normal images allow α ≥ 1/(n+1) = 1/{n + 1} ≈ {1 / (n + 1):.4g}, got α = {alpha}: "
                         f"use at least {normal_images_needed(value)} normal images for α = {alpha}, "
                         f"or a larger α")
    return math.ceil((n + 1) * (1 - value))


def conformal_threshold(scores, alpha) -> float:
    """The split-conformal threshold of normal ``scores`` ``[n]``: their ``ceil((n+1)(1-alpha))``-th smallest.

    A new score exchangeable with ``scores`` is above it with probability at most ``alpha``
    (module docstring: what that assumes, what it does not promise). Raises ``ValueError`` when
    ``alpha < 1 / (n + 1)``, the smallest rate ``n`` scores allow.
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise InputError(f"conformal_threshold needs finite scores of normal images, got {values.size} "
                         f"({int((~np.isfinite(values)).sum())} not finite)")
    return float(conformal_thresholds(values[None], alpha)[0])


def conformal_thresholds(calibration, alpha) -> np.ndarray:
    """:func:`conformal_threshold` of each row of ``calibration`` ``[R, n]`` -> ``[R]`` (vectorised)."""
    calibration = np.asarray(calibration, np.float64)
    rank = conformal_rank(calibration.shape[1], alpha)
    return np.partition(calibration, rank - 1, axis=1)[:, rank - 1]


def false_alarm_rates(calibration, evaluation, alpha) -> np.ndarray:
    """Observed false-alarm rate of the conformal threshold per split: ``calibration`` ``[R, n]`` and
    ``evaluation`` ``[R, m]`` normal scores of ``R`` random splits -> ``[R]`` (vectorised)."""
    thresholds = conformal_thresholds(calibration, alpha)  # [R]
    return (np.asarray(evaluation, np.float64) > thresholds[:, None]).mean(axis=1)


def random_splits(scores, n: int, repeats: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``repeats`` random splits of normal ``scores`` ``[N]`` into ``n`` calibration and ``N - n``
    evaluation scores: ``([R, n], [R, N - n])``, seeded."""
    scores = np.asarray(scores, np.float64).ravel()
    if not 0 < n < scores.size:
        raise ValueError(f"a split needs 0 < n < {scores.size} calibration scores, got n = {n}")
    order = np.argsort(np.random.default_rng(seed).random((repeats, scores.size)), axis=1)  # [R, N]
    shuffled = scores[order]
    return shuffled[:, :n], shuffled[:, n:]


def decision_rates(threshold: float, scores, labels) -> dict[str, float]:
    """``{"false-alarm rate", "miss rate"}`` of the rule "anomalous when score > threshold" on labelled
    ``scores`` ``[N]`` (``labels`` 1 = anomalous); NaN where a kind of image is absent."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    flagged = scores > threshold
    rate = lambda values: float(values.mean()) if values.size else float("nan")  # noqa: E731
    return {"false-alarm rate": rate(flagged[~labels]), "miss rate": rate(~flagged[labels])}


def confusion(threshold: float, scores, labels) -> np.ndarray:
    """The confusion matrix ``[[TN, FP], [FN, TP]]`` of the rule "anomalous when score >= threshold"
    (note: ``>=``, the rule of a threshold read off the scores, e.g. F1-max's; :func:`decision_rates`
    is the strict rule of the conformal guarantee) on labelled ``scores`` ``[N]`` (1 = anomalous)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    flagged = scores >= threshold
    return np.array([[int((~flagged & ~labels).sum()), int((flagged & ~labels).sum())],
                     [int((~flagged & labels).sum()), int((flagged & labels).sum())]])


def decision_costs(threshold: float, scores, labels, cost_missed: float = 10.0,
                   cost_false_alarm: float = 1.0) -> dict[str, float]:
    """The counts of :func:`confusion` at ``threshold``, the recall and the false-alarm rate (in %), and
    the cost ``cost_missed * FN + cost_false_alarm * FP``."""
    (tn, fp), (fn, tp) = confusion(threshold, scores, labels)
    return {"threshold": float(threshold), "true negatives": int(tn), "false alarms (FP)": int(fp),
            "missed defects (FN)": int(fn), "true positives": int(tp),
            "recall %": 100 * tp / max(tp + fn, 1), "false-alarm rate %": 100 * fp / max(fp + tn, 1),
            "cost": cost_missed * fn + cost_false_alarm * fp}


def coverage(normal_scores, anomalous_scores, n: int, alphas: Sequence[float], repeats: int = 2000,
             seed: int = 0) -> dict[str, np.ndarray]:
    """The calibration experiment: over ``repeats`` random splits of ``normal_scores`` into ``n`` calibration
    and the rest for evaluation, per ``alpha``: the mean observed false-alarm rate of the conformal threshold
    (and its standard error) and of the plain ``1 - alpha`` quantile of the same ``n`` scores, and the mean
    miss rate each threshold gives on ``anomalous_scores``. Returns arrays ``[A]`` keyed by name."""
    calibration, evaluation = random_splits(normal_scores, n, repeats, seed)  # [R, n], [R, N - n]
    anomalous = np.asarray(anomalous_scores, np.float64).ravel()  # [M]
    rows = []
    for alpha in alphas:
        rules = {"conformal": conformal_thresholds(calibration, alpha),  # [R]
                 "quantile": np.quantile(calibration, 1 - float(alpha), axis=1)}
        row = {}
        for rule, thresholds in rules.items():
            alarms = (evaluation > thresholds[:, None]).mean(axis=1)  # [R]
            row[f"{rule} false alarms"] = alarms.mean()
            row[f"{rule} false alarms se"] = alarms.std(ddof=1) / np.sqrt(repeats)
            row[f"{rule} misses"] = (anomalous[None] <= thresholds[:, None]).mean() if anomalous.size else np.nan
        rows.append(row)
    return {"alpha": np.asarray(alphas, np.float64), **{key: np.array([r[key] for r in rows]) for key in rows[0]}}


def config_record(model) -> dict:
    """The model's config as JSON data (tuples as lists), for records and comparisons."""
    return json.loads(json.dumps(dataclasses.asdict(model.config)))


def prompt_record(prompts: Sequence[str | Path] | None) -> list[dict] | None:
    """The reference images of a few-shot method as ``[{"path", "sha256"}]`` (sorted by path), or None."""
    if prompts is None:
        return None
    return sorted(({"path": str(p.resolve()), "sha256": sha256_of(p)} for p in user_images(prompts)),
                  key=lambda item: item["path"])


def refusal(spec: Method) -> str | None:
    """Why a method's scores cannot be calibrated on normal images, or None when they can."""
    if spec.transductive:
        return (f"{spec.name} is transductive: it scores each image against the other images of the test set, "
                "so a threshold from normal images does not carry over to a new image")
    if spec.class_scores is not None:
        return (f"{spec.name}'s image scores are normalised over the whole test set of a class, so a threshold "
                "from normal images does not carry over to a new image")
    return None


@dataclass(frozen=True)
class Calibration:
    """Thresholds calibrated on ``n`` normal images at false-alarm rate ``alpha`` (saved as JSON).

    ``image_threshold``: flag an image when its score is above it (P <= alpha for a normal image).
    ``pixel_threshold``: conformal on the normal images' map maxima, so "any pixel of a normal image
    above it" also has P <= alpha; ``pixel_fpr``: the fraction of the calibration maps' pixels above
    it (both None for a method without maps). The rest says what the thresholds are valid for.
    """

    image_threshold: float
    pixel_threshold: float | None
    pixel_fpr: float | None
    n: int
    alpha: float
    smallest_alpha: float
    method: str
    config: dict
    checkpoint_sha256: str | None
    prompts: list[dict] | None
    profile: str | None
    class_name: str | None
    source: str | None = field(default=None, compare=False)  # the file it was loaded from (not saved)

    def to_json(self) -> dict:
        record = {"format": FORMAT, **dataclasses.asdict(self)}
        record.pop("source")
        return record

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON, atomically."""
        return write_json_atomic(self.to_json(), path)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Read a calibration written by :meth:`save`; a file that is not one is one :class:`InputError` line."""
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read calibration {path}: {err}. Make one with `zsadlab calibrate`") from None
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        if not isinstance(record, dict) or record.get("format") != FORMAT or not names <= set(record):
            raise InputError(f"{path} is not a zsadlab calibration ({FORMAT}); make one with `zsadlab calibrate`")
        return cls(**{name: record[name] for name in names}, source=str(path))

    @classmethod
    def is_calibration(cls, path: str | Path) -> bool:
        """Is the file at ``path`` a calibration written by :meth:`save`?"""
        try:
            cls.load(path)
        except InputError:
            return False
        return True

    def check_model(self, model, class_name: str | None = None, prompts: Sequence[str | Path] | None = None) -> None:
        """Refuse (one :class:`InputError` line) a model, class or reference set other than the calibrated ones."""
        where = self.source or "this calibration"
        if method_of(model).name != self.method:
            raise InputError(f"{where} was made with method {self.method}, not {method_of(model).name}: "
                             f"calibrate {method_of(model).name} with `zsadlab calibrate`")
        if config_record(model) != self.config:
            changed = sorted(k for k, v in config_record(model).items() if self.config.get(k) != v)
            raise InputError(f"{where} was made with another {self.method} config (differs in {', '.join(changed)}); "
                             "use the same --profile, or calibrate this one")
        if getattr(model, "checkpoint_sha256", None) != self.checkpoint_sha256:
            raise InputError(f"{where} was made with another checkpoint (sha256 {self.checkpoint_sha256 or 'none'}, "
                             f"this model's {getattr(model, 'checkpoint_sha256', None) or 'none'}); "
                             "pass the calibrated --checkpoint, or calibrate this one")
        if class_name is not None and (self.class_name or "object") != class_name:
            raise InputError(f"{where} was calibrated for class {self.class_name or 'object'!r}, not {class_name!r}: "
                             f"pass --class-name {self.class_name or 'object'}, or calibrate this class")
        if self.prompts is not None and prompts is not None and prompt_record(prompts) != self.prompts:
            raise InputError(f"{where} was made with other reference images (--prompts); pass the same ones, "
                             "or calibrate with these")

    def decision(self, score: float) -> bool:
        """Is an image with ``score`` anomalous (score above the image threshold)?"""
        return float(score) > self.image_threshold


def normal_scores(model, images: Sequence[Path], class_name: str,
                  prompts: Sequence[str | Path] | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(scores [n], map maxima [n] or None, pixel scores [n*S*S] or None)`` of readable normal images."""
    predictor = predictor_for(model, class_name, prompts).eval()
    device = device_of(model)
    scores, maxima, pixels = [], [], []
    for path in tqdm(images, desc="calibrate", leave=False):
        try:
            image = model_input(model, path)
        except DatasetError as err:
            raise InputError(f"calibration image {path} cannot be read ({err}); remove it or replace it") from None
        score, amap = predictor.predict(image[None].to(device), [class_name])
        scores.append(float(score[0]))
        if amap is not None:
            values = amap[0].float().cpu().numpy().ravel()  # [S*S]
            maxima.append(float(values.max()))
            pixels.append(values)
    if not pixels:
        return np.asarray(scores), None, None
    return np.asarray(scores), np.asarray(maxima), np.concatenate(pixels)


def calibrate(model, images, alpha: float = 0.01, class_name: str | None = None, *,
              prompts: Sequence[str | Path] | None = None) -> Calibration:
    """Calibrate ``model`` on normal ``images`` (paths or a folder) at false-alarm rate ``alpha``.

    The image threshold is :func:`conformal_threshold` of their scores; the pixel threshold the same
    on each image's map maximum. ``class_name`` (default: ``"object"``, as predict) is the class the
    thresholds are for; few-shot methods need ``prompts`` (normal reference images, not among
    ``images``). What the guarantee assumes and what it does not promise: the module docstring.
    """
    spec = method_of(model)
    reason = refusal(spec)
    if reason:
        raise InputError(f"cannot calibrate {spec.name}: {reason}")
    paths = user_images([images] if isinstance(images, (str, Path)) else images)
    conformal_rank(len(paths), alpha)  # refuse too small an alpha before any compute
    references = prompt_record(prompts)
    if references and {p["path"] for p in references} & {str(p.resolve()) for p in paths}:
        raise InputError("the calibration images include reference images (--prompts): a reference scores as "
                         "normal by construction; use separate normal images for each")
    with torch.no_grad():
        scores, maxima, pixels = normal_scores(model, paths, class_name or "object", prompts)
    pixel_threshold = conformal_threshold(maxima, alpha) if maxima is not None else None
    return Calibration(
        image_threshold=conformal_threshold(scores, alpha), pixel_threshold=pixel_threshold,
        pixel_fpr=float((pixels > pixel_threshold).mean()) if pixels is not None else None,
        n=len(paths), alpha=float(alpha), smallest_alpha=float(smallest_alpha(len(paths))), method=spec.name,
        config=config_record(model), checkpoint_sha256=getattr(model, "checkpoint_sha256", None),
        prompts=references, profile=getattr(model, "profile_name", None), class_name=class_name)
