"""The expected answers of the notebooks' exercises, computed here so that no student cell shows them.

A notebook's check cell reads ``check("3. ...", answer, expected("04.3", results=results))``: the key is
``"<notebook>.<exercise>"`` (``"<notebook>.<exercise>.<part>"`` for a second graded answer of one exercise)
and the keyword arguments are what the run measured. Each answer is either a fact of the papers (read from
:mod:`zsadlab.references`), a fact of the code or the data (computed the way the solution computes it), or
a measurement of this run. ``None`` means the run cannot grade the answer: a prediction about a
*full-profile* run checked in a smoke run (tiny random CLIP), or a measurement the student has not made yet;
:func:`zsadlab.notebook.check` then records the answer instead of grading it against noise.

Instructors: this module is the answer key. Students who open it spoil their own exercises.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from . import calibration, metrics, references
from .backbone import grid_size
from .data import AnomalyDataset
from .dpam import attention_maps
from .engine.evaluation import fewshot_outputs, fewshot_prompts
from .methods import get_method
from .musc import interval_bounds

ANSWERS: dict[str, Callable[..., object]] = {}


def answer(key: str):
    """Register the function that computes exercise ``key``'s expected answer."""
    def register(function):
        ANSWERS[key] = function
        return function
    return register


def expected(key: str, **context):
    """The expected answer of exercise ``key`` (e.g. ``"04.3"``) given what the run measured (``context``);
    ``None`` where this run cannot grade it."""
    if key not in ANSWERS:
        raise KeyError(f"no exercise {key!r}; known: {', '.join(sorted(ANSWERS))}")
    return ANSWERS[key](**context)


def best(values: Mapping[str, float]) -> str:
    """The key of the largest value."""
    return max(values, key=values.get)


def worst(values: Mapping[str, float]) -> str:
    """The key of the smallest value."""
    return min(values, key=values.get)


def paper_values(methods: Mapping[str, str], dataset: str, metric: str, setting: str = "zero_shot") -> dict[str, float]:
    """``{label: value}`` of the reported ``metric`` for each ``{label: method}`` (unreported ones left out)."""
    found = {label: references.lookup(method, dataset, metric, setting) for label, method in methods.items()}
    return {label: record.value for label, record in found.items() if record is not None}


# --- notebook 00: setup and data ------------------------------------------------------


@answer("00.1")
def mean_defect_area(root) -> float:
    """Mean over classes of the mean anomalous fraction of a defective test image, in %."""
    dataset = AnomalyDataset(root, split="test", image_size=None)
    per_class = []
    for name in dataset.classes:
        view = dataset.subset(name)
        per_class.append(np.mean([float(view[i]["mask"].mean()) for i in range(len(view)) if view.labels[i] == 1]))
    return 100 * float(np.mean(per_class))


@answer("00.1.2")
def defect_area_bin(root) -> str:
    """The bin of the mean anomalous area of a defective test image (:func:`mean_defect_area`): "under 1%",
    "1-10%" or "over 10%"."""
    area = mean_defect_area(root)
    return "under 1%" if area < 1 else "1-10%" if area <= 10 else "over 10%"


# --- notebook 01: CLIP's baseline failure ---------------------------------------------


@answer("01.1")
def best_pixel_baseline(methods: Mapping[str, str]) -> str:
    """The baseline with the highest pixel AUROC on MVTec AD in the AnomalyCLIP paper (Table 1)."""
    return best(paper_values(methods, "mvtec", "pixel_auroc"))


@answer("01.1.2")
def clip_image_vs_pixel() -> str:
    """"higher" or "lower": plain CLIP's image AUROC on MVTec AD compared with its pixel AUROC in the
    AnomalyCLIP paper (Table 1)."""
    image, pixel = (references.lookup("clip", "mvtec", metric).value for metric in ("image_auroc", "pixel_auroc"))
    return "higher" if image > pixel else "lower"


@answer("01.2")
def mean_attention_distance(visual, x, block: int) -> float:
    """Exercise 2's measurement: the attention-weighted distance (in patches, between patch centres) from each patch
    to the patches it attends to in ``block`` (Q-K attention averaged over heads; CLS left out, each row
    renormalised over the patches), averaged over the patches of image ``x`` ``[1, 3, S, S]``."""
    with torch.no_grad():
        a = attention_maps(visual, x, block, mode=None)[0, 1:, 1:].detach().cpu().double()  # [P, P]
    grid = grid_size(visual, x.shape[-1])
    yx = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).reshape(-1, 2).double()
    p = a / a.sum(dim=-1, keepdim=True)
    return float((p * torch.cdist(yx, yx)).sum(dim=-1).mean())


# --- notebook 02: DPAM ----------------------------------------------------------------


@answer("02.1")
def least_diagonal(diagonal: Mapping[str, Mapping[str, float]]) -> str:
    """The attention mode with the smallest diagonal share in this run's last block."""
    return worst({label: row["diagonal share"] for label, row in diagonal.items()})


# --- notebook 03: object-agnostic prompts ---------------------------------------------


@answer("03.1")
def costliest_removal() -> frozenset[str]:
    """The module whose removal costs more MVTec AD image AUROC in the paper's ablation (App. D), by its
    ablation label (``"w/o T2"``) or the module's name (``"T2"``)."""
    removed = {"w/o T2": "ablation:no_object_agnostic", "w/o T3": "ablation:no_deep_text_tokens"}
    label = worst({name: references.lookup("anomalyclip", "mvtec", "image_auroc", setting).value
                   for name, setting in removed.items()})
    return frozenset({label, label.removeprefix("w/o ")})


@answer("03.3")
def trainable_prompt_parameters(learner) -> int:
    """How many parameters of the prompt learner are trainable (``requires_grad``)."""
    return sum(p.numel() for p in learner.parameters() if p.requires_grad)


@answer("03.3.2")
def used_prompt_parameters(learner) -> int:
    """How many trainable parameters the forward pass uses: all but the official ``compound_prompt_projections``,
    which are built but never called (they receive no gradient)."""
    return sum(p.numel() for name, p in learner.named_parameters()
               if p.requires_grad and not name.startswith("compound_prompt_projections"))


# --- notebook 04: global and local losses ---------------------------------------------


@answer("04.1")
def lowest_image_auroc(results: Mapping[str, Mapping[str, float]], meaningful: bool) -> str | None:
    """The loss setting with the lowest image AUROC in a meaningful run; ``None`` (ungraded) in smoke."""
    return worst({label: row["image_auroc"] for label, row in results.items()}) if meaningful else None


@answer("04.2")
def level_favoured_by_lam(lams: Mapping[str, Mapping[str, float]]) -> str | None:
    """"image" or "pixel": the level whose AUROC gains more (or loses less) from ``lam = 1`` to ``lam = 16``
    in this run's sweep (``{"lam = 1": summary, "lam = 16": summary}``); ``None`` before the sweep ran."""
    if not all(k in lams for k in ("lam = 1", "lam = 16")):
        return None
    low, high = lams["lam = 1"], lams["lam = 16"]
    gain = {level: high[f"{level}_auroc"] - low[f"{level}_auroc"] for level in ("image", "pixel")}
    return "pixel" if gain["pixel"] > gain["image"] else "image"


@answer("04.3")
def local_loss_gain(results: Mapping[str, Mapping[str, float]]) -> float:
    """Pixel-AUROC points the local loss adds to the global one in this run (``both - global only``)."""
    return 100 * (results["both (AnomalyCLIP)"]["pixel_auroc"] - results["global only"]["pixel_auroc"])


# --- notebook 05: training ------------------------------------------------------------


@answer("05.1")
def shallow_trainable_parameters(model) -> int:
    """With ``depth=1`` only the two context blocks learn: ``2 * n_ctx * text width``."""
    width = next(p.shape[-1] for n, p in model.named_parameters() if n.endswith("ctx_pos"))
    return 2 * model.config.n_ctx * width


@answer("05.2")
def epoch_of_largest_gain(curve: Mapping[int, float]) -> int | None:
    """The epoch n whose checkpoint adds the most pixel AUROC over epoch n - 1 (``{epoch: value}``, epoch 0 =
    the initial prompts); ``None`` (not graded) with fewer than two trained epochs: one candidate is no question."""
    epochs = sorted(curve)
    if len(epochs) < 3:
        return None
    return max(epochs[1:], key=lambda n: curve[n] - curve[epochs[epochs.index(n) - 1]])


@answer("05.3")
def amp_speedup(speeds: Mapping[str, float], device) -> float | None:
    """AMP's training speed-up in this run: steps/s with ``amp=True`` over steps/s in fp32; ``None`` (not graded)
    off CUDA, where ``amp=True`` changes nothing and the ratio is timing noise."""
    if torch.device(device).type != "cuda" or not all(k in speeds for k in ("fp32", "amp")):
        return None
    return speeds["amp"] / speeds["fp32"]


# --- notebook 06: zero-shot evaluation ------------------------------------------------


@answer("06.1")
def lowest_pixel_auroc_on_visa(methods: Mapping[str, str]) -> str:
    """The method with the lowest VisA pixel AUROC in the AnomalyCLIP paper (Table 1)."""
    return worst(paper_values(methods, "visa", "pixel_auroc"))


@answer("06.2")
def f1_follows_image_auroc(f1: Mapping[str, float], tables, name: str, cls: str) -> str | None:
    """"yes" when ranking the methods by image F1-max on ``name/cls`` agrees with ranking them by that class's
    image AUROC in this run's tables - no pair of methods ordered one way by one metric and the other way by the
    other (a tie agrees with either order) - else "no"; ``None`` before the F1-max values exist."""
    if not f1:
        return None
    auroc = {method: next(r for r in tables[name, method].rows if r["class"] == cls)["image_auroc"] for method in f1}
    swapped = any(f1[a] > f1[b] and auroc[a] < auroc[b] for a in f1 for b in f1)
    return "no" if swapped else "yes"


@answer("06.3")
def largest_aupro_gap(table) -> str | None:
    """The class of ``table`` (one method on one target) with the largest gap between the two AUPROs; ``None``
    (not graded) with fewer than two classes: one candidate is no question."""
    rows = [r for r in table.rows if np.isfinite(r["aupro_mvtec"]) and np.isfinite(r["aupro_anomalyclip"])]
    return max(rows, key=lambda r: abs(r["aupro_mvtec"] - r["aupro_anomalyclip"]))["class"] if len(rows) > 1 else None


# --- notebook 07: TN3K ----------------------------------------------------------------


@answer("07.1")
def finetuned_vs_zero_shot(results: Mapping[str, Mapping[str, float]], meaningful: bool) -> str | None:
    """Is the fine-tuned row's pixel AUROC above or below the MVTec-trained zero-shot row's (meaningful runs)."""
    if not meaningful:
        return None
    fine, zero = results["fine-tuned (trainval)"]["pixel_auroc"], results["zero-shot, MVTec"]["pixel_auroc"]
    return "above" if fine > zero else "below"


@answer("07.2")
def finetuning_gain(results: Mapping[str, Mapping[str, float]]) -> float:
    """Pixel-AUROC points of the fine-tuned row over the MVTec-trained zero-shot row in this run."""
    return 100 * (results["fine-tuned (trainval)"]["pixel_auroc"] - results["zero-shot, MVTec"]["pixel_auroc"])


@answer("07.3")
def test_selection_optimism(curve: Mapping[int, float]) -> float | None:
    """Points of test pixel AUROC an epoch picked on the test images adds over the recipe's last epoch; ``None``
    (not graded) with a single epoch, where the two are the same checkpoint."""
    if len(curve) < 2:
        return None
    return 100 * (max(curve.values()) - curve[max(curve)])


@answer("07.4")
def paper_aupro_definition() -> str:
    """The AUPRO definition of the AnomalyCLIP paper's TN3K value (Table 2) in the reference table."""
    return next(r.metric for r in references.find("anomalyclip", "tn3k") if r.metric.startswith("aupro"))


# --- notebook 08: InCTRL few-shot -----------------------------------------------------


@answer("08.1")
def best_separating_part(model, queries, support, parts: Mapping[str, str], shots: int, seed: int, prompt_dir,
                         dataset_name: str) -> str:
    """The part of InCTRL's score with the highest image AUROC over this run's queries."""
    outputs, labels = fewshot_outputs(model, queries, support, list(parts.values()), shots, seed, prompt_dir,
                                      dataset_name)
    return best({part: metrics.image_auroc(outputs[field], labels) for part, field in parts.items()})


@answer("08.1.1")
def part_aurocs(model, queries, support, parts: Mapping[str, str], shots: int, seed: int, prompt_dir,
                dataset_name: str) -> np.ndarray:
    """Each part's image AUROC in % over this run's queries, in the order of ``parts``."""
    outputs, labels = fewshot_outputs(model, queries, support, list(parts.values()), shots, seed, prompt_dir,
                                      dataset_name)
    return np.array([100 * metrics.image_auroc(outputs[field], labels) for field in parts.values()])


@answer("08.2")
def band_widths(per_k: Mapping[str, Mapping[int, list]]) -> np.ndarray:
    """The min-max band width over prompt seeds in points, ``[method, k]`` in the order of ``per_k``."""
    return np.array([[100 * (max(v) - min(v)) for v in by_k.values()] for by_k in per_k.values()])


@answer("08.3")
def wrong_prompt_direction(model, queries, class_name: str, prompts, other, other_support, shots: int, seed: int,
                           prompt_dir, other_name: str, n_queries: int = 8) -> str:
    """"up", "down" or "unchanged": the mean InCTRL score of the first ``n_queries`` normal queries of
    ``queries`` when the prompts of ``class_name`` are replaced by ``shots`` normal images of ``other``'s first
    class (this run's model)."""
    wrong, _ = fewshot_prompts(other_support or other, other.classes[0], shots, seed, prompt_dir, other_name)
    normal = [queries[i]["image"] for i in range(len(queries)) if queries.labels[i] == 0][:n_queries]
    x = torch.stack(normal).to(next(model.parameters()).device)  # [n, 3, S, S]
    spec = get_method("inctrl")
    right_mean, wrong_mean = (float(spec.with_prompts(model, {class_name: p}).predict(x, [class_name] * len(x))[0].mean())
                              for p in (prompts, wrong))
    return "up" if wrong_mean > right_mean else "down" if wrong_mean < right_mean else "unchanged"


# --- notebook 09: playground ----------------------------------------------------------


@answer("09.1")
def map_maximum_without_dpam(model, image, class_name: str) -> str:
    """"up" or "down": the anomaly map's maximum of one image ``[3, S, S]`` when AnomalyCLIP's DPAM is switched
    from V-V to none at inference (this run's model): a measurement of one image, graded against the run."""
    x = image[None].to(next(model.parameters()).device)  # [1, 3, S, S]
    with_vv = float(model.predict(x, [class_name])[1].max())
    without = float(model.variant(dpam_mode=None).predict(x, [class_name])[1].max())
    return "up" if without > with_vv else "down"


@answer("09.2")
def gap_larger_at_most_shots(model, test_set, defective: int, normal: int, support, prompt_dir,
                             dataset_name: str, shots=(1, 8)) -> str:
    """"yes" or "no": whether InCTRL's score gap (defective minus normal test image, each scored against the
    normal sample prompts of its own class, prompt seed 0) is larger at the last of ``shots`` than at the first."""
    spec, device = get_method("inctrl"), next(model.parameters()).device

    def score(index: int, k: int) -> float:
        item = test_set[index]
        prompts, _ = fewshot_prompts(support, item["class_name"], k, 0, prompt_dir, dataset_name)
        predictor = spec.with_prompts(model, {item["class_name"]: prompts})
        return float(predictor.predict(item["image"][None].to(device), [item["class_name"]])[0][0])

    first, last = (score(defective, k) - score(normal, k) for k in (shots[0], shots[-1]))
    return "yes" if last > first else "no"


# --- notebook 10: protocol and decisions ----------------------------------------------


@answer("10.1")
def false_alarms_at(scores, labels, normal_scores, quantile: float, stricter: float) -> str:
    """"down", "unchanged" or "up": the false alarms (normal images with score >= threshold) when the
    threshold moves from the ``quantile`` to the ``stricter`` quantile of the held-out normal scores."""
    normal = np.asarray(scores)[np.asarray(labels) == 0]
    before, after = (int((normal >= np.quantile(normal_scores, q)).sum()) for q in (quantile, stricter))
    return "down" if after < before else "up" if after > before else "unchanged"


@answer("10.1.1")
def false_alarms_can_rise(scores, labels) -> str:
    """"yes" or "no": whether raising the threshold of the rule "anomalous when score >= t" ever raises the
    number of false alarms, over every threshold between this run's scores (it cannot: the flagged set only
    shrinks)."""
    counts = [calibration.confusion(t, scores, labels)[0, 1] for t in np.unique(scores)]
    return "yes" if np.any(np.diff(counts) > 0) else "no"


@answer("10.1.2")
def misses_can_fall(scores, labels) -> str:
    """"yes" or "no": whether raising the threshold of the rule "anomalous when score >= t" ever lowers the
    number of missed defects, over every threshold between this run's scores (it cannot)."""
    counts = [calibration.confusion(t, scores, labels)[1, 0] for t in np.unique(scores)]
    return "yes" if np.any(np.diff(counts) < 0) else "no"


@answer("10.2")
def cost_optimal_thresholds(scores, labels, cost_missed: float, cost_false_alarm: float) -> np.ndarray:
    """The cheapest threshold among this run's unique scores (the lowest one where costs tie) with
    ``cost_missed`` and with ``cost_missed = 1``: ``[t(cost_missed), t(1)]``."""
    def cheapest(missed: float) -> float:
        rows = (calibration.decision_costs(float(t), scores, labels, missed, cost_false_alarm) for t in np.unique(scores))
        return float(min(rows, key=lambda row: row["cost"])["threshold"])
    return np.array([cheapest(cost_missed), cheapest(1.0)])


@answer("10.3")
def hardest_visa_class() -> str:
    """The VisA class with the lowest image AUROC in the official AnomalyCLIP log (``zsadlab.references``)."""
    rows = [r for r in references.find("anomalyclip", "visa", "image_auroc") if r.setting.startswith("official_log:")]
    return min(rows, key=lambda r: r.value).setting.split(":", 1)[1]


@answer("10.3.1")
def hardest_class(table) -> str:
    """The class with the lowest image AUROC in this run's per-class table (classes without one left out)."""
    rows = [row for row in table.rows if row["image_auroc"] == row["image_auroc"]]
    return min(rows, key=lambda row: row["image_auroc"])["class"]


@answer("10.4")
def normal_images_for(alpha: float) -> int:
    """The fewest calibration images whose conformal threshold can promise a false-alarm rate ``alpha``."""
    return calibration.normal_images_needed(alpha)


# --- notebook 11: MuSc ----------------------------------------------------------------


@answer("11.1")
def distances_averaged(n: int, config) -> int:
    """How many nearest-image distances MSM averages per patch for ``n`` images (``_MSM.py:19-26``)."""
    k_min, k_max = interval_bounds(n - 1, config.topmin_min, config.topmin_max)
    return k_max - k_min


@answer("11.2")
def smallest_scorable_set(model) -> int:
    """The fewest images a MuSc model can score together."""
    return model.min_images


@answer("11.3")
def min_max_normalised(maxima) -> np.ndarray:
    """RsCIN with ``k_list=(1,)`` is the min-max normalisation of the scores."""
    maxima = np.asarray(maxima, np.float64)
    return (maxima - maxima.min()) / np.ptp(maxima)


@answer("11.4")
def rscin_auroc_change(before, after, labels) -> float:
    """Image AUROC after RsCIN minus before, as a fraction (this run's class)."""
    return metrics.image_auroc(after, labels) - metrics.image_auroc(before, labels)
