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
  the same prompts (this module writes no files). Two draw rules
  (:data:`DRAW_RULES`): distinct images (InCTRL, WinCLIP+) or, as VAND's official
  few-shot test, ``k`` independent draws **with replacement** (:func:`reference_seed`).

The helpers take plain sequences (paths, labels, class names), so they work
with ``AnomalyDataset.samples`` or any list. :class:`PromptedPredictor` is the shape every
few-shot method shares at test time: one reference set per class, encoded once.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn


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


WITHOUT_REPLACEMENT, WITH_REPLACEMENT = "without_replacement", "with_replacement"
DRAW_RULES = (WITHOUT_REPLACEMENT, WITH_REPLACEMENT)


def reference_seed(class_name: str, shots: int, seed: int) -> int:
    """A 63-bit seed for the references of (class, k, seed), the same on every machine (sha256), so
    that classes and shot counts draw independently of each other and of the order they are drawn in."""
    digest = hashlib.sha256(f"{class_name}\0{shots}\0{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_prompt_paths(normal_paths: Sequence[str | os.PathLike], shots: int, seed: int,
                        draw: str = WITHOUT_REPLACEMENT, class_name: str = "") -> list[str]:
    """``shots`` paths out of ``normal_paths`` (taken as a set: sorted first) by the rule ``draw``.

    * ``"without_replacement"``: ``shots`` distinct paths, a function of the set of paths and ``seed``.
    * ``"with_replacement"``: VAND's official rule (``dataset.py``, ``mode='train'``:
      ``torch.randint(0, len(data_tmp), (k_shot,))``): ``shots`` independent uniform draws, so a
      reference may repeat. The official draw runs on the global torch RNG after the model is built
      (its exact files cannot be reproduced); here on a generator seeded by
      :func:`reference_seed` of (``class_name``, ``shots``, ``seed``).
    """
    pool = sorted(str(p) for p in normal_paths)
    if draw not in DRAW_RULES:
        raise ValueError(f"unknown draw rule {draw!r}; choose one of {DRAW_RULES}")
    if draw == WITH_REPLACEMENT:
        if not pool:
            raise ValueError(f"{shots}-shot prompts need at least one normal image, none given")
        generator = torch.Generator().manual_seed(reference_seed(class_name, shots, seed))
        return [pool[i] for i in torch.randint(0, len(pool), (shots,), generator=generator).tolist()]
    if len(pool) < shots:
        raise ValueError(f"{shots}-shot prompts need {shots} normal images, only {len(pool)} given")
    picked = np.random.default_rng(seed).choice(len(pool), size=shots, replace=False)
    return [pool[i] for i in picked]


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


class PromptedPredictor(nn.Module):
    """A few-shot model with one fixed set of normal reference images per class, behind the
    engine's ``predict(x, class_names) -> (scores [B], maps [B, S, S])``.

    Each class's references ``[k, 3, S, S]`` are encoded once (:meth:`encode`); a batch may mix
    classes, and each image is scored against its own class's memory (:meth:`predict_class`).
    A method subclasses it with those two methods, and sets :attr:`draw` (one of
    :data:`DRAW_RULES`) when its official references are drawn by another rule.
    """

    draw = WITHOUT_REPLACEMENT  # how evaluation draws this method's reference sets (sample_prompt_paths)

    def __init__(self, model: nn.Module, prompts: Mapping[str, torch.Tensor]):
        super().__init__()
        self.model, self.config, self.clip = model, model.config, model.clip
        with torch.no_grad():
            self.memories = {name: self.encode(images) for name, images in prompts.items()}

    def encode(self, images: torch.Tensor) -> Any:
        """The memory of one class's reference images ``[k, 3, S, S]``."""
        raise NotImplementedError

    def predict_class(self, x: torch.Tensor, class_name: str, memory: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [b], maps [b, S, S])`` of images ``x`` of one class against its memory."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.empty(x.shape[0], device=x.device)  # [B]
        maps = torch.empty(x.shape[0], x.shape[-2], x.shape[-1], device=x.device)  # [B, S, S]
        for name in dict.fromkeys(class_names):
            rows = torch.tensor([i for i, n in enumerate(class_names) if n == name], device=x.device)
            scores[rows], maps[rows] = self.predict_class(x[rows], name, self.memories[name])
        return scores, maps
