"""Predictions over a dataset, per-class result tables and the few-shot evaluation protocol.

* :func:`predict_dataset` - scores and maps of every image of a dataset, at the method's
  evaluation batch and precision; a transductive method gets each class's whole test set in one
  call (:func:`prediction_batches`); :func:`class_predictions` - the same, one class at a time;
* :func:`evaluate` - the zero-shot table: metrics (chosen by name from
  :data:`zsadlab.metrics.METRICS`) per class, then their mean;
* :func:`evaluate_fewshot` - the few-shot table: per class, image metrics as the mean and
  std over prompt-sampling seeds, with the prompt sets saved and reused (files live here,
  not in the concept module :mod:`zsadlab.fewshot`);
* :func:`test` - "the method's evaluation protocol", whatever the method.

A cell whose metric is undefined for its class (one label only, no masks) is NaN, shown as
``-`` and written as ``null`` in JSON; the mean skips it and the table says how many classes
each mean covers. Any other metric error (NaN scores, bad shapes) raises.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import fewshot
from ..data import AnomalyDataset, DatasetError, collate, dataset_name
from ..errors import InputError, UserError
from ..metrics import UndefinedMetricError, get_metric
from ..utils import pick_device, write_json_atomic, write_text_atomic
from .building import autocast, dataset_for, device_of, eval_batch_size, method_of, precision_of, registered_method

METRIC_COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro_mvtec", "aupro_anomalyclip")
FEWSHOT_METRICS = ("image_auroc", "image_ap")


# --- predictions ----------------------------------------------------------------------------


def prediction_batches(model, dataset: AnomalyDataset, batch_size: int | None) -> list[list[int]]:
    """The index batches ``model`` is called on: ``batch_size`` images at a time (default: its
    evaluation batch), or for a transductive method one batch per class holding the class's whole
    test set (:class:`~zsadlab.methods.AnomalyModel`), refused with one line below its ``min_images``."""
    spec = registered_method(model)
    if spec is None or not spec.transductive:
        size = batch_size or eval_batch_size(model)
        return [list(range(i, min(i + size, len(dataset)))) for i in range(0, len(dataset), size)]
    names = [sample.class_name for sample in dataset.samples]
    sets = [[i for i, n in enumerate(names) if n == name] for name in dict.fromkeys(names)]
    small = [(names[rows[0]], len(rows)) for rows in sets if len(rows) < spec.min_images]
    if small:
        raise InputError(f"{spec.name} scores each class's test set as a whole and needs at least {spec.min_images} "
                         f"images per class; {dataset.root} has {small[0][1]} of class {small[0][0]!r}")
    return sets


@torch.no_grad()
def predict_dataset(model, dataset: AnomalyDataset, batch_size: int | None = None, device=None,
                    progress: bool = True, amp: bool | None = None) -> dict:
    """Scores and maps of every image: ``scores`` [N], ``maps`` [N, S, S] float32 (``None`` for a
    model without maps), ``masks`` [N, S, S] uint8, ``has_mask`` [N], ``labels`` [N],
    ``class_names``, ``paths`` (lists), in the dataset's order.

    Batches of ``batch_size`` (default: the method's evaluation batch of its profile), or one class's
    whole test set per call for a transductive method (:func:`prediction_batches`); at the method's
    precision (:func:`~zsadlab.engine.building.precision_of`, ``amp`` overrides it on CUDA). Each batch
    is written into arrays allocated once for the N images, so the maps are held once (never as
    batches plus their concatenation).
    """
    device = pick_device(device) if device is not None else device_of(model)
    precision = precision_of(model, device, amp)
    model.to(device).eval()
    loader = DataLoader(dataset, batch_sampler=prediction_batches(model, dataset, batch_size), collate_fn=collate)
    n = len(dataset)
    pred = {"scores": np.empty(n, np.float32), "maps": None, "masks": None, "has_mask": np.empty(n, bool),
            "labels": np.empty(n, np.int64), "class_names": [None] * n, "paths": [None] * n}
    with_maps, first = True, True
    for rows, batch in tqdm(zip(loader.batch_sampler, loader), total=len(loader), desc="predict",
                            disable=not progress, leave=False):
        with autocast(precision, device):
            scores, maps = model.predict(batch["image"].to(device), batch["class_name"])
        if first:
            pred["masks"] = np.empty((n, *batch["mask"].shape[1:]), np.uint8)  # [N, S, S]
            if maps is not None:
                pred["maps"] = np.empty((n, *maps.shape[1:]), np.float32)  # [N, S, S]
            first = False
        with_maps = with_maps and maps is not None
        if with_maps:
            pred["maps"][rows] = maps.float().cpu().numpy()
        pred["scores"][rows] = scores.float().cpu().numpy()
        pred["masks"][rows] = batch["mask"].numpy()
        pred["has_mask"][rows] = batch["has_mask"].numpy()
        pred["labels"][rows] = batch["label"].numpy()
        for i, name, path in zip(rows, batch["class_name"], batch["path"]):
            pred["class_names"][i], pred["paths"][i] = name, path
    if not with_maps:
        pred["maps"] = None
    return pred


def class_predictions(model, dataset: AnomalyDataset, batch_size: int | None = None, device=None,
                      progress: bool = True, amp: bool | None = None):
    """``(class name, predictions of that class)`` for each class in turn: the way to go over a
    dataset holding one class's maps at a time (what :func:`evaluate` does)."""
    for class_name in tqdm(dataset.classes, desc="classes", disable=not progress, leave=False):
        yield class_name, predict_dataset(model, dataset.subset(class_name), batch_size, device, progress=False,
                                          amp=amp)


# --- metrics and tables -----------------------------------------------------------------------


def pixel_inputs(pred: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """``(maps, masks)`` ``[M, S, S]`` of the images with pixel labels, ``None`` if there are none.

    The arrays themselves when every image has pixel labels (no copy), else their selection.
    """
    pixel = pred["has_mask"].astype(bool)
    if pred["maps"] is None or not pixel.any():
        return None
    if pixel.all():
        return pred["maps"], pred["masks"]
    return pred["maps"][pixel], pred["masks"][pixel]


def _value(function, inputs) -> float:
    try:
        return float(function(*inputs))
    except UndefinedMetricError:
        return math.nan


def metric_value(name: str, pred: dict) -> float:
    """Metric ``name`` of a prediction dict; NaN where it is undefined (one label only, no masks)."""
    return class_metrics(pred, (name,))[name]


def class_metrics(pred: dict, columns: Sequence[str] = METRIC_COLUMNS) -> dict[str, float]:
    """``{metric name: value}`` for one set of predictions, undefined cells NaN (the pixels with
    labels are selected once for all pixel metrics)."""
    metrics = {name: get_metric(name) for name in columns}
    pixels = pixel_inputs(pred) if any(m.level == "pixel" for m in metrics.values()) else None
    image = (pred["scores"], pred["labels"])
    return {name: (_value(m.function, image) if m.level == "image"
                   else math.nan if pixels is None else _value(m.function, pixels)) for name, m in metrics.items()}


def _finite_or_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass
class ResultTable:
    """Per-class results plus their mean: prints as a table, saves as CSV or JSON (no pandas)."""

    rows: list[dict] = field(default_factory=list)  # each {"class": name, metric: value, ...}
    columns: tuple[str, ...] = METRIC_COLUMNS

    def covered(self, column: str) -> int:
        """How many classes have a defined value in ``column`` (the mean is over those)."""
        return sum(not math.isnan(r[column]) for r in self.rows)

    @property
    def mean(self) -> dict:
        """The mean over classes of each column, skipping undefined (NaN) entries."""
        means = {}
        for col in self.columns:
            values = [r[col] for r in self.rows if not math.isnan(r[col])]
            means[col] = float(np.mean(values)) if values else math.nan
        return {"class": "mean", **means}

    @property
    def coverage(self) -> dict[str, int]:
        """``{column: classes covered}`` for the columns whose mean skips classes."""
        return {c: self.covered(c) for c in self.columns if self.covered(c) < len(self.rows)}

    def __str__(self) -> str:
        header = ["class", *self.columns]
        lines = [header] + [[r["class"]] + [f"{100 * r[c]:.1f}" if not math.isnan(r[c]) else "-" for c in self.columns]
                            for r in [*self.rows, self.mean]]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)
        skipped = ", ".join(f"{c} over {n}/{len(self.rows)}" for c, n in self.coverage.items())
        return text + (f"\n(undefined cells '-' are left out of the mean: {skipped} classes)" if skipped else "")

    def _repr_html_(self) -> str:
        return "<pre>" + str(self) + "</pre>"

    def to_csv(self, path: str | Path) -> Path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["class", *self.columns])
        writer.writeheader()
        writer.writerows([*self.rows, self.mean])
        return write_text_atomic(buffer.getvalue(), path)

    def to_json(self, path: str | Path) -> Path:
        """``{"rows", "mean", "classes", "covered"}``; undefined cells are ``null``."""
        clean = [{k: _finite_or_none(v) for k, v in r.items()} for r in [*self.rows, self.mean]]
        return write_json_atomic({"rows": clean[:-1], "mean": clean[-1], "classes": len(self.rows),
                                  "covered": {c: self.covered(c) for c in self.columns}}, path)


@contextmanager
def configured_for_test(model, dataset):
    """``model`` with ``model.config`` set, while the block runs, to what the method's official test script
    uses on this test set, chosen by the set's registry name (``Method.for_test_set``; e.g. MuSc's RsCIN
    ``k_list`` on VisA); the model's own config is restored afterwards."""
    spec = registered_method(model)
    if spec is None or spec.for_test_set is None or getattr(dataset, "root", None) is None:
        yield model
        return
    own = model.config
    model.config = spec.for_test_set(own, dataset_name(dataset.root))
    try:
        yield model
    finally:
        model.config = own


def evaluate(model, dataset: AnomalyDataset | str | os.PathLike, batch_size: int | None = None, device=None,
             progress: bool = True, columns: Sequence[str] = METRIC_COLUMNS, amp: bool | None = None) -> ResultTable:
    """Per-class table over ``dataset`` (official protocol: metrics per class, then the mean); a
    prepared dataset's folder is read as ``dataset_for(model, folder)`` (its test split).

    Memory: one class's maps at a time (:func:`class_predictions`); pixels are pooled within a
    class, as the official per-class metrics are, never across the dataset. ``batch_size``: default
    the method's evaluation batch; ``amp``: see :func:`predict_dataset`."""
    if isinstance(dataset, (str, os.PathLike)):
        dataset = dataset_for(model, dataset)
    elif not hasattr(dataset, "classes"):
        raise TypeError(f"evaluate() takes a dataset (engine.dataset_for(model, root)) or its folder, "
                        f"got {type(dataset).__name__}")
    table = ResultTable(columns=tuple(columns))
    with configured_for_test(model, dataset):
        for class_name, pred in class_predictions(model, dataset, batch_size, device, progress, amp):
            table.rows.append({"class": class_name, **class_metrics(pred, columns)})
            del pred  # one class's maps at a time: free these before the next class is predicted
    return table


# --- few-shot ------------------------------------------------------------------------------------


def prompt_set_path(directory: str | Path, dataset: str, class_name: str, shots: int, seed: int,
                    draw: str = fewshot.WITHOUT_REPLACEMENT) -> Path:
    """Where the evaluation prompt set of (dataset, class, k, seed, draw rule) is stored; a set drawn
    with replacement (VAND) gets its own file, so no method ever reads a set drawn by the other rule."""
    rule = "" if draw == fewshot.WITHOUT_REPLACEMENT else f"_{draw}"
    return Path(directory) / dataset / f"{class_name}_k{shots}_seed{seed}{rule}.json"


def load_or_sample_prompt_set(directory: str | Path, dataset: str, class_name: str, shots: int, seed: int,
                              normal_paths: Sequence[str], draw: str = fewshot.WITHOUT_REPLACEMENT) -> list[str]:
    """The evaluation prompt paths of (dataset, class, k, seed, draw rule): read if saved, else sampled
    (:func:`zsadlab.fewshot.sample_prompt_paths`) and saved as atomic JSON.

    The draw rule is part of the file's identity (its name and its ``"draw"`` field; a file without
    the field predates the rule and was drawn without replacement). A saved file whose key or number
    of paths does not match is refused, never replaced. ``normal_paths`` (relative to the dataset
    root, so the file survives moving the data) are only read when the set does not exist yet.
    """
    path = prompt_set_path(directory, dataset, class_name, shots, seed, draw)
    key = {"dataset": dataset, "class_name": class_name, "shots": shots, "seed": seed, "draw": draw}
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved.setdefault("draw", fewshot.WITHOUT_REPLACEMENT)
        if {k: saved.get(k) for k in key} != key or len(saved.get("paths", ())) != shots:
            raise UserError(f"prompt set {path} does not hold {key} with {shots} paths; delete it to resample")
        return list(saved["paths"])
    paths = fewshot.sample_prompt_paths(normal_paths, shots, seed, draw=draw, class_name=class_name)
    write_json_atomic({**key, "paths": paths}, path)
    return paths


def _stack_images(dataset: AnomalyDataset, indices) -> torch.Tensor:
    return torch.stack([dataset[int(i)]["image"] for i in indices])  # [n, 3, S, S]


def fewshot_prompts(support: AnomalyDataset, class_name: str, shots: int, seed: int,
                    prompt_dir: str | Path, dataset_name: str,
                    draw: str = fewshot.WITHOUT_REPLACEMENT) -> tuple[torch.Tensor, list[Path]]:
    """Normal prompt images ``[K, 3, S, S]`` of a class and their paths, from the saved prompt set of
    (dataset, class, k, seed, draw rule) (sampled from ``support``'s normal images of the class the first time)."""
    by_path = {str(s.path.relative_to(support.root)): i for i, s in enumerate(support.samples)
               if s.class_name == class_name and s.label == 0}
    paths = load_or_sample_prompt_set(prompt_dir, dataset_name, class_name, shots, seed, sorted(by_path), draw)
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise UserError(f"prompt set for {dataset_name}/{class_name} names images not in {support.root}: "
                        f"{missing[:3]}; delete {prompt_dir} to resample")
    return _stack_images(support, [by_path[p] for p in paths]), [support.root / p for p in paths]


def class_scored(spec, pred: dict) -> dict:
    """``pred`` of one class's whole query set with the method's ``class_scores`` applied (if it has one)."""
    if spec.class_scores is None:
        return pred
    return {**pred, "scores": np.asarray(spec.class_scores(pred["scores"], pred["maps"]), dtype=np.float64)}


def checked_shots_and_seeds(shots: int, seeds: Sequence[int]) -> None:
    """A ``ValueError`` naming the argument when ``shots`` is not a positive integer or ``seeds`` is empty."""
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots must be a positive integer (the k normal prompts per class), got {shots!r}")
    if isinstance(seeds, (str, bytes)) or len(list(seeds)) == 0:
        raise ValueError(f"seeds must be a non-empty list of prompt-sampling seeds (e.g. [0]), got {seeds!r}")


def evaluate_fewshot(model, dataset: AnomalyDataset, support: AnomalyDataset | None = None, shots: int = 4,
                     seeds: Sequence[int] = (0,), prompt_dir: str | Path = "runs/prompts",
                     dataset_name: str | None = None, batch_size: int | None = None, progress: bool = True,
                     columns: Sequence[str] = FEWSHOT_METRICS, amp: bool | None = None) -> ResultTable:
    """Few-shot table: per class, each image metric as the mean (and ``<name>_std``) over prompt seeds.

    For each (class, seed) one set of ``shots`` normal images is drawn from ``support`` (the
    class's normal training images) by the method's draw rule (its predictor's ``draw``: VAND with
    replacement, the others without), saved under ``prompt_dir`` and reused by later runs, and
    shared by every test query of the class - the official test protocol (fixtures/inctrl §3.10-11).
    Datasets without a training split (``support=None``) lend the prompts from their own normal test
    images, which are then left out of the evaluated queries. A method with ``class_scores`` (VAND
    few-shot) gets its scores from the whole query set of the class, before any metric.
    """
    checked_shots_and_seeds(shots, seeds)
    spec = method_of(model)
    dataset_name = dataset_name or Path(dataset.root).name
    table = ResultTable(columns=tuple(c for name in columns for c in (name, f"{name}_std")))
    for class_name in tqdm(dataset.classes, desc=f"{shots}-shot classes", disable=not progress, leave=False):
        normals = sum(s.class_name == class_name and s.label == 0 for s in (support or dataset).samples)
        if normals < shots:
            warnings.warn(f"{dataset_name}/{class_name} has {normals} normal image(s), fewer than the k={shots} "
                          f"prompts it needs: its row is left undefined ('-'); use at most {normals} shots for it.",
                          stacklevel=2)
            table.rows.append({"class": class_name, **{c: math.nan for c in table.columns}})
            continue
        per_seed = []
        for seed in seeds:
            prompts, paths = fewshot_prompts(support or dataset, class_name, shots, seed, prompt_dir, dataset_name,
                                             getattr(spec.with_prompts, "draw", fewshot.WITHOUT_REPLACEMENT))
            queries = dataset.subset(class_name).excluding(paths if support is None else [])
            predictor = spec.with_prompts(model, {class_name: prompts})
            pred = class_scored(spec, predict_dataset(predictor, queries, batch_size, progress=False, amp=amp))
            per_seed.append([metric_value(name, pred) for name in columns])
        values = np.array(per_seed)  # [seeds, metrics]
        row = {"class": class_name}
        for name, column in zip(columns, values.T):
            row[name], row[f"{name}_std"] = float(column.mean()), float(column.std())
        table.rows.append(row)
    return table


@torch.no_grad()
def fewshot_outputs(model, dataset: AnomalyDataset, support: AnomalyDataset | None, fields: Sequence[str],
                    shots: int, seed: int, prompt_dir: str | Path, dataset_name: str,
                    batch_size: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({field: [N]}, labels [N])``: the named fields of a few-shot model's output
    ``model(x, prompts, class_name)`` (e.g. InCTRL's ``text_score`` ... ``final_score``) for every
    query of ``dataset``, with the same prompt sets and left-out prompt images as :func:`evaluate_fewshot`
    (``batch_size`` queries at a time, default: the method's evaluation batch)."""
    device, batch_size = next(model.parameters()).device, batch_size or eval_batch_size(model)
    values: dict[str, list[float]] = {field: [] for field in fields}
    labels: list[int] = []
    for class_name in dataset.classes:
        prompts, paths = fewshot_prompts(support or dataset, class_name, shots, seed, prompt_dir, dataset_name)
        queries = dataset.subset(class_name).excluding(paths if support is None else [])
        for start in range(0, len(queries), batch_size):
            index = range(start, min(start + batch_size, len(queries)))
            out = model(_stack_images(queries, index).to(device), prompts.to(device), class_name)
            for field in fields:
                values[field] += getattr(out, field).float().cpu().tolist()
        labels += queries.labels.tolist()
    return {field: np.asarray(v) for field, v in values.items()}, np.asarray(labels)


def support_set(model, root) -> AnomalyDataset | None:
    """Where the few-shot sample prompts of the dataset at ``root`` come from, as ``model`` reads
    it: its training split (train/good), or ``None`` when it has none - then :func:`evaluate_fewshot`
    draws them from the test split's normal images and leaves them out of the queries."""
    try:
        return dataset_for(model, root, split="train")
    except DatasetError:
        return None


def test(model, root, shots: int = 4, seeds: Sequence[int] = (0,), out_dir=None, amp: bool | None = None) -> ResultTable:
    """The method's evaluation protocol on the prepared dataset at ``root``: the zero-shot table,
    or for a few-shot method the table over prompt seeds (prompt sets saved in ``out_dir/prompts``);
    at the method's precision (``amp`` overrides it on CUDA)."""
    checked_shots_and_seeds(shots, seeds)
    if not method_of(model).few_shot:
        return evaluate(model, dataset_for(model, root), amp=amp)
    return evaluate_fewshot(model, dataset_for(model, root), support_set(model, root), shots=shots, seeds=seeds,
                            prompt_dir=Path(out_dir or "runs") / "prompts", amp=amp)


test.__test__ = False  # not a pytest test
