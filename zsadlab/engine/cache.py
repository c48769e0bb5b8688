"""Load-or-train: the run cache that keeps the series from training the same model twice.

A training is identified by everything that decides its result: the method, its config, the
training data (:func:`~.training.data_identity`: the dataset's name, split and the exact list of images -
paths relative to the dataset's root - with their sizes, so a budget subset or another draw of a synthetic
set is a different run, and the same data under another root or in another clone is the same run), the seed,
the epochs, the global batch, the step budget and the precision (``Method.precision`` on the model's device:
fp16 autocast or fp32). :func:`training_key` turns that into a short digest and :func:`load_or_train` runs
the one trainer (``engine.train``)
in ``<cache>/<method>-<digest>/``: a finished run is loaded from its resume state instead of
trained again, an interrupted one resumes after its last completed epoch. An entry has one writer at a
time (the run folder's lock, :func:`~zsadlab.engine.training.run_folder`): a second process asking for
the same training while it runs is refused in one line naming the folder and the holder's pid.

Every request can be logged to the JSON file named by ``ZSADLAB_TRAININGS_LOG`` - one entry
``{"notebook", "key", "action"}`` per request, ``action`` one of ``trained``, ``reused`` or
``pulled`` (an official checkpoint) - which is how ``make notebooks`` shows that no training of
the series runs twice (``build/notebooks/trainings.json``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils import write_json_atomic
from .building import device_of, method_of, precision_of
from .training import completed_epochs, configure_for, data_identity, is_main_process, run_folder, train

TRAININGS_LOG_ENV = "ZSADLAB_TRAININGS_LOG"
NOTEBOOK_ENV = "ZSADLAB_NOTEBOOK"
CACHE_ENV = "ZSADLAB_CACHE"  # overrides the notebooks' run cache folder (runs/cache)
ACTIONS = ("trained", "reused", "pulled")


@dataclass(frozen=True)
class CachedRun:
    """The outcome of one training request: the run folder, its loss history and what happened."""

    key: str
    folder: Path | None
    history: dict
    action: str  # one of ACTIONS


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data (dataclasses, tuples and paths included), for hashing."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def training_key(**parts: Any) -> str:
    """A 16-hex-digit digest of ``parts``; equal parts give equal keys, on any machine."""
    text = json.dumps(_plain(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def log_request(key: str, action: str) -> None:
    """Append ``{"notebook", "key", "action"}`` to the file named by ``ZSADLAB_TRAININGS_LOG`` (if set)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    log = os.environ.get(TRAININGS_LOG_ENV)
    if not log:
        return
    path = Path(log)
    entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    entries.append({"notebook": os.environ.get(NOTEBOOK_ENV, ""), "key": key, "action": action})
    write_json_atomic(entries, path)


@dataclass(frozen=True)
class RunSpec:
    """One training as the run cache knows it: its ``key`` and the values :func:`engine.train` runs with."""

    key: str
    method: str
    epochs: int
    batch_size: int
    seed: int
    max_steps_per_epoch: int | None
    precision: str
    options: dict

    def folder(self, cache_dir: str | Path) -> Path:
        """The run folder of this training in the cache ``cache_dir``."""
        return Path(cache_dir) / f"{self.method}-{self.key}"

    def done(self, cache_dir: str | Path) -> bool:
        """Has this training completed all its epochs in ``cache_dir``?"""
        return completed_epochs(self.folder(cache_dir)) >= self.epochs


def run_spec(model, dataset, epochs: int | None = None, batch_size: int | None = None, seed: int | None = None,
             max_steps_per_epoch: int | None = None, amp: bool | None = None, **plan_options) -> RunSpec:
    """The :class:`RunSpec` of training ``model`` on ``dataset`` (``None``: the method's official values,
    as :func:`engine.train`; the recipe's choices for this training set applied to the model first,
    :func:`~.training.configure_for`) - what :func:`load_or_train` keys the cache by, computed without training."""
    spec = method_of(model)
    configure_for(model, dataset)  # the recipe's choices for this training set, so they are in the key
    epochs = epochs or model.config.epochs
    batch_size = batch_size or model.config.batch_size
    seed = spec.seed if seed is None else seed
    precision = precision_of(model, device_of(model), amp)
    key = training_key(method=spec.name, config=model.config, data=data_identity(dataset), seed=seed, epochs=epochs,
                       batch_size=batch_size, max_steps_per_epoch=max_steps_per_epoch, precision=precision,
                       options=plan_options)
    return RunSpec(key, spec.name, epochs, batch_size, seed, max_steps_per_epoch, precision, dict(plan_options))


def load_or_train(model, dataset, cache_dir: str | Path, epochs: int | None = None, batch_size: int | None = None,
                  seed: int | None = None, max_steps_per_epoch: int | None = None, progress: bool = True,
                  amp: bool | None = None, **plan_options) -> CachedRun:
    """Train ``model`` on ``dataset`` with :func:`engine.train`, unless this exact training is in the cache.

    ``None`` arguments take the method's official values (as :func:`engine.train`). The model
    ends up holding the trained parts either way; ``action`` says whether they were trained now
    (``"trained"``, also when an interrupted run was resumed) or loaded (``"reused"``).
    """
    run = run_spec(model, dataset, epochs, batch_size, seed, max_steps_per_epoch, amp=amp, **plan_options)
    folder = run.folder(cache_dir)
    with run_folder(folder, is_main_process()):  # one writer per entry: another process gets one line, not a mix
        action = "reused" if run.done(cache_dir) else "trained"
        history = train(model, dataset, run.epochs, run.batch_size, out_dir=folder, resume=True, seed=run.seed,
                        amp=amp, max_steps_per_epoch=max_steps_per_epoch, progress=progress, **plan_options)
    log_request(run.key, action)
    return CachedRun(run.key, folder, history, action)
