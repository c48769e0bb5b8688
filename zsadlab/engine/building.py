"""Building a registered method on a profile, the dataset a model reads, and its checkpoints.

Every function here looks the method up in :mod:`zsadlab.methods`; none knows a method by
name or type. A model built by :func:`build_model` remembers its method's name
(``model.method_name``), which is how the trainer and the evaluation find its recipe.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ..anomalyclip import AnomalyCLIPConfig, preset_config
from ..backbone import preprocess_config
from ..data import AnomalyDataset
from ..data.download import sha256_of
from ..methods import Method, get_method
from ..profiles import Profile
from ..utils import pick_device


def anomalyclip_config(profile: Profile, preset: str = "anomalyclip", **changes) -> AnomalyCLIPConfig:
    """The preset's config at the profile's AnomalyCLIP setup, with ``changes`` applied last."""
    return preset_config(preset, profile.config("anomalyclip")).replace(**changes)


def build_model(method: str, profile: Profile, device=None, seed: int | None = None, **config_changes):
    """The model of registered ``method`` on ``profile``'s backbone, on ``device``, in eval mode; it
    remembers its method and profile (``model.method_name``, ``model.profile_name``).

    ``seed`` (default: the method's official seed, 111 for AnomalyCLIP) initialises the trainable
    parts, as the official scripts' ``setup_seed`` before building the model.
    """
    spec = get_method(method)
    model = spec.build(profile, pick_device(device), spec.seed if seed is None else seed, **config_changes)
    model.method_name, model.profile_name = method, profile.name
    return model


def method_of(model) -> Method:
    """The registered method a model was built as (by :func:`build_model`)."""
    name = getattr(model, "method_name", None)
    if name is None:
        raise ValueError(f"this {type(model).__name__} was not built by engine.build_model, so its method is "
                         "unknown; build it with engine.build_model(method, profile)")
    return get_method(name)


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
