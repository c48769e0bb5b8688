"""Few-shot sample prompts: which normal images a query is compared with.

Two protocols, as in the official InCTRL code (fixtures/inctrl §3.10), made reproducible,
and the official training batches (:func:`balanced_batches`):

* **Training** - every query gets its own ``k`` prompts drawn from the normal
  images of its class (:func:`sample_prompt_indices`). Unlike the official code
  (unseeded ``random.sample``) the draw is seeded and never picks the query itself.
* **Evaluation** - one fixed set of ``k`` normal images per (dataset, class, k,
  seed), shared by every test query of that class. The authors distribute theirs
  as tensors without the sampling code; here the set is a function of the set of
  candidate paths and the seed (:func:`sample_prompt_paths`); the engine saves it
  as a JSON list of image paths and reuses it, so every run and every reader sees
  the same prompts (this module writes no files).

The helpers take plain sequences (paths, labels, class names), so they work
with ``AnomalyDataset.samples`` or any list.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Callable, Iterator, Sequence

import numpy as np
import torch


def normal_indices_by_class(labels: Sequence[int], class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{class name: indices of its normal (label 0) samples}``."""
    pools: dict[str, list[int]] = defaultdict(list)
    for index, (label, name) in enumerate(zip(labels, class_names, strict=True)):
        if int(label) == 0:
            pools[name].append(index)
    return {name: np.asarray(indices) for name, indices in pools.items()}


def sample_prompt_indices(query_indices: Sequence[int], labels: Sequence[int], class_names: Sequence[str],
                          shots: int, rng: int | np.random.Generator) -> np.ndarray:
    """``[Q, shots]`` indices of normal samples of each query's class, never the query itself.

    ``labels`` and ``class_names`` describe the whole pool (e.g. the training
    set); ``query_indices`` index into it. ``rng`` is a seed or a NumPy
    ``Generator`` (pass one generator across steps to get fresh draws each step).
    Draws are without replacement within a query.
    """
    rng = np.random.default_rng(rng)
    pools = normal_indices_by_class(labels, class_names)
    chosen = np.empty((len(query_indices), shots), dtype=np.int64)
    for row, query in enumerate(query_indices):
        name = class_names[query]
        candidates = pools.get(name, np.empty(0, dtype=np.int64))
        candidates = candidates[candidates != query]
        if len(candidates) < shots:
            raise ValueError(f"class {name!r} has {len(candidates)} normal images besides query {query}; "
                             f"{shots}-shot prompts need at least {shots}")
        chosen[row] = rng.choice(candidates, size=shots, replace=False)
    return chosen


def sample_prompt_paths(normal_paths: Sequence[str | os.PathLike], shots: int, seed: int) -> list[str]:
    """``shots`` distinct paths out of ``normal_paths``, a function of the *set* of paths and ``seed`` only."""
    pool = sorted(str(p) for p in normal_paths)
    if len(pool) < shots:
        raise ValueError(f"{shots}-shot prompts need {shots} normal images, only {len(pool)} given")
    picked = np.random.default_rng(seed).choice(len(pool), size=shots, replace=False)
    return [pool[i] for i in picked]


def predict_per_class(x: torch.Tensor, class_names: Sequence[str],
                      predict_class: Callable[[torch.Tensor, str], tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [B], maps [B, S, S])`` of a batch of several classes, in batch order.

    A few-shot predictor holds one prompt set per class, so ``predict_class(images, name)``
    runs once per class on that class's images ``[b, 3, S, S]`` and returns ``([b], [b, S, S])``.
    """
    scores = torch.empty(x.shape[0], device=x.device)  # [B]
    maps = torch.empty(x.shape[0], x.shape[-2], x.shape[-1], device=x.device)  # [B, S, S]
    for name in dict.fromkeys(class_names):
        rows = torch.tensor([i for i, n in enumerate(class_names) if n == name], device=x.device)
        scores[rows], maps[rows] = predict_class(x[rows], name)
    return scores, maps


def _endless_permutations(indices: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    while True:
        yield from rng.permutation(indices).tolist()


def balanced_batches(labels: Sequence[int], batch_size: int, steps: int,
                     rng: int | np.random.Generator) -> list[list[int]]:
    """``steps`` batches of indices: ``batch_size // 2`` normal images, then the rest anomalous.

    As the official ``BalancedBatchSampler``: each half cycles through fresh
    random permutations of its pool, so an epoch is ``steps`` batches however
    large the dataset (official: 100 steps of 8 + 8).
    """
    rng = np.random.default_rng(rng)
    labels = np.asarray(labels)
    pools = {label: np.flatnonzero(labels == label) for label in (0, 1)}
    empty = [name for name, label in (("normal", 0), ("anomalous", 1)) if not len(pools[label])]
    if empty:
        raise ValueError(f"balanced batches need normal and anomalous images; no {' or '.join(empty)} ones given")
    normal, anomalous = _endless_permutations(pools[0], rng), _endless_permutations(pools[1], rng)
    n_normal = batch_size // 2
    return [[next(normal) for _ in range(n_normal)] + [next(anomalous) for _ in range(batch_size - n_normal)]
            for _ in range(steps)]
