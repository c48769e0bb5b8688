"""Building a registered method on a profile, the dataset a model reads, its precision and checkpoints.

Every function here looks the method up in :mod:`zsadlab.methods`; none knows a method by
name or type. A model built by :func:`build_model` remembers its method's name
(``model.method_name``), which is how the trainer and the evaluation find its recipe, and its
profile's evaluation batch (``model.eval_batch_size``).
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator, Sequence

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ..backbone import preprocess_config
from ..data import AnomalyDataset
from ..data.download import sha256_of
from ..methods import Method, get_method, run_precision
from ..profiles import Profile
from ..utils import pick_device

DEFAULT_EVAL_BATCH = 8  # for a model not built by build_model


def build_model(method: str, profile: Profile, device=None, seed: int | None = None, **config_changes):
    """The model of registered ``method`` with its setup for ``profile``, on ``device``, in eval mode; it
    remembers its method and profile (``model.method_name``, ``model.profile_name``).

    ``seed`` (default: the method's official seed, 111 for AnomalyCLIP) initialises the trainable
    parts, as the official scripts' ``setup_seed`` before building the model.
    """
    spec = get_method(method)
    setup = profile.setup(method)
    model = spec.build(setup, pick_device(device), spec.seed if seed is None else seed, **config_changes)
    model.method_name, model.profile_name = method, profile.name
    model.eval_batch_size = setup.eval_batch_size
    return model


def eval_batch_size(model) -> int:
    """The batch its profile evaluates ``model``'s method at (:class:`~zsadlab.methods.Setup`), also
    for a few-shot predictor around such a model; :data:`DEFAULT_EVAL_BATCH` for a model built by hand."""
    inner = getattr(model, "model", None)
    return getattr(model, "eval_batch_size", None) or getattr(inner, "eval_batch_size", DEFAULT_EVAL_BATCH)


def method_of(model) -> Method:
    """The registered method a model was built as (by :func:`build_model`)."""
    name = getattr(model, "method_name", None)
    if name is None:
        raise ValueError(f"this {type(model).__name__} was not built by engine.build_model, so its method is "
                         "unknown; build it with engine.build_model(method, profile)")
    return get_method(name)


def registered_method(model) -> Method | None:
    """The registered method of a model built by :func:`build_model` (or of a few-shot predictor
    around one), ``None`` for a model built by hand."""
    name = getattr(model, "method_name", None) or getattr(getattr(model, "model", None), "method_name", None)
    return get_method(name) if name else None


@functools.lru_cache(maxsize=None)
def _say_once(text: str) -> None:
    print(text)


def precision_of(model, device, amp: bool | None = None) -> str:
    """``"fp16"`` (CUDA fp16 autocast) or ``"fp32"``: the precision ``model`` runs at on ``device``
    (:func:`zsadlab.methods.run_precision`; a model built by hand follows ``amp``, else fp32).

    Off CUDA it is fp32, and when the method (or ``amp=True``) asked for fp16 it says so, once.
    """
    spec = registered_method(model)
    asked = amp if amp is not None else spec is not None and spec.precision == "fp16"
    device = torch.device(device)
    if device.type != "cuda" and asked:
        name = spec.name if spec else type(model).__name__
        _say_once(f"zsadlab: {name} would run fp16 autocast on CUDA; on {device.type} it runs fp32")
    if spec is None:
        return "fp16" if amp and device.type == "cuda" else "fp32"
    return run_precision(spec, device, amp)


@contextlib.contextmanager
def autocast(precision: str, device) -> Iterator[None]:
    """fp16 autocast on CUDA for ``precision == "fp16"`` (the official ``torch.cuda.amp.autocast()``)."""
    with torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=precision == "fp16"):
        yield


def device_of(model) -> torch.device:
    """Where the model's parameters live (CPU for a model without parameters)."""
    return next(iter(model.parameters()), torch.empty(0)).device


def input_normalisation(model) -> dict:
    """``{"mean", "std"}`` of the model's inputs: its CLIP's, else OpenAI CLIP's."""
    clip = getattr(model, "clip", None)
    return preprocess_config(clip) if clip is not None else {"mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD}


def dataset_for(model, root, split: str = "test", classes: Sequence[str] | None = None,
                require_masks: bool = False) -> AnomalyDataset:
    """An :class:`AnomalyDataset` at the model's image size (``model.config.image_size``), normalisation
    and its method's official test transform (``Method.resize``)."""
    norm = input_normalisation(model)
    return AnomalyDataset(root, split=split, classes=classes, image_size=model.config.image_size,
                          mean=norm["mean"], std=norm["std"], require_masks=require_masks,
                          resize=method_of(model).resize)


def load_checkpoint(model, path: str | Path):
    """Load a checkpoint in the official format of the model's method (weights_only, one-line errors).

    The model remembers the file's sha256 (``model.checkpoint_sha256``), which a calibration and an
    export record, so that thresholds are never applied to other weights.
    """
    spec = method_of(model)
    if spec.load is None:
        raise ValueError(f"{spec.name} learns nothing, so it has no checkpoint to load")
    model = spec.load(model, path)
    model.checkpoint_sha256 = sha256_of(path)
    return model
