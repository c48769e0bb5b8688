"""ONNX export of a zero-shot method's image path, its text side computed once (``zsadlab export``).

A zero-shot CLIP method compares image tokens with a handful of text features. Those features do not
depend on the image: AnomalyCLIP's learned prompts are object-agnostic (one ``[2, D]`` pair for every
class), VAND's prompt ensemble gives one pair per class name. The exported graph therefore holds the
text features as constants and runs only the image path - DPAM, the per-layer maps, the sum and the
Gaussian smoothing (:func:`zsadlab.maps.gaussian_smooth`: fixed convolutions with scipy's symmetric
padding, the same index gathers in the graph as in torch) - through the model's own
``predict_with_text``, so the graph is the torch code, traced:

* input ``images`` ``[B, 3, S, S]``, preprocessed as the method's transform (``Method.resize``, the
  CLIP's mean/std; stored in the metadata), and for a method whose text depends on the class
  (VAND, and the class-aware AnomalyCLIP presets) ``class_index`` ``[B]`` (int64) into the class
  names given at export (metadata ``zsadlab.class_names``);
* outputs ``scores`` ``[B]`` and ``maps`` ``[B, S, S]``; the batch is dynamic.

Few-shot methods (reference images at run time), methods whose scores are normalised over a test
set and methods without a fixed-text image path are refused with one line. onnx and onnxruntime
come with ``pip install zsadlab[export]``.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .calibration import config_record, refusal
from .engine.building import input_normalisation, method_of
from .errors import InputError
from .methods import Method
from .utils import atomic_path

OPSET = 17
FORMATS = ("onnx",)


class ImagePathGraph(nn.Module):
    """``images [B, 3, S, S]`` (+ ``class_index [B]``) -> ``(scores [B], maps [B, S, S])``: the model's
    ``predict_with_text`` with its text features ``[C, 2, D]`` stored as a constant."""

    def __init__(self, model: nn.Module, text: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("text", text.detach().clone())  # [C, 2, D]

    def forward(self, images: torch.Tensor, class_index: torch.Tensor | None = None):
        text = self.text[0] if class_index is None else self.text[class_index]  # [2, D] or [B, 2, D]
        return self.model.predict_with_text(images, text)


@contextlib.contextmanager
def plain_attention():
    """``nn.MultiheadAttention`` without its fused inference kernel (which has no ONNX form) inside."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def method_refusal(spec: Method) -> str | None:
    """Why a method cannot be exported whatever its model (few-shot, normalised scores), or None."""
    if spec.few_shot:
        return f"{spec.name} is few-shot: it compares each image with normal reference images given at run time"
    return refusal(spec)


def export_refusal(model) -> str | None:
    """Why ``model`` cannot be exported, or None when it can."""
    spec = method_of(model)
    reason = method_refusal(spec)
    if reason:
        return reason
    if not hasattr(model, "predict_with_text"):
        return (f"{spec.name} has no image path with precomputable text to export "
                "(exportable: the AnomalyCLIP presets and vand zero-shot)")
    return None


def export_graph(model, class_names: Sequence[str] | None = None) -> ImagePathGraph:
    """The model's image path with its text features as constants: one pair for a class-independent
    model (no ``class_names``), else one per name of ``class_names`` (input ``class_index``)."""
    reason = export_refusal(model)
    if reason:
        raise InputError(f"cannot export {method_of(model).name}: {reason}")
    name = method_of(model).name
    if model.class_independent and class_names:
        raise InputError(f"{name}'s prompts are object-agnostic (the same text for every class): "
                         "leave out --class-names")
    if not model.class_independent and not class_names:
        raise InputError(f"{name}'s text depends on the class: pass --class-names a,b,... "
                         "(the graph then takes class_index [B])")
    with torch.no_grad():
        text = model.text_features(None)[None] if model.class_independent else model.text_features(list(class_names))
    return ImagePathGraph(model, text).eval()  # text [C, 2, D]


def graph_metadata(model, class_names: Sequence[str] | None, calibration=None) -> dict[str, str]:
    """The ``zsadlab.*`` metadata of an exported graph: what it is, its preprocessing and thresholds."""
    norm = input_normalisation(model)
    meta = {"zsadlab.method": method_of(model).name, "zsadlab.config": json.dumps(config_record(model)),
            "zsadlab.checkpoint_sha256": getattr(model, "checkpoint_sha256", None) or "",
            "zsadlab.image_size": str(model.config.image_size), "zsadlab.resize": method_of(model).resize,
            "zsadlab.mean": json.dumps(list(norm["mean"])), "zsadlab.std": json.dumps(list(norm["std"])),
            "zsadlab.class_names": json.dumps(list(class_names or []))}
    if calibration is not None:
        meta.update({"zsadlab.image_threshold": repr(calibration.image_threshold),
                     "zsadlab.pixel_threshold": repr(calibration.pixel_threshold),
                     "zsadlab.alpha": repr(calibration.alpha),
                     "zsadlab.calibration_class": calibration.class_name or "object"})
    return meta


def is_export(path: str | Path) -> bool:
    """Is the file at ``path`` an ONNX graph written by :func:`export_onnx` (metadata ``zsadlab.method``)?"""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a protobuf, unreadable: not ours
        return False
    return any(prop.key == "zsadlab.method" for prop in model.metadata_props)


def export_onnx(model, out: str | Path, class_names: Sequence[str] | None = None, calibration=None,
                batch: int = 2) -> Path:
    """Write the ONNX graph of ``model`` (see the module docstring) to ``out``, atomically.

    ``calibration``: a :class:`zsadlab.calibration.Calibration` of this model (else refused), whose
    thresholds go into the metadata (``zsadlab.image_threshold``, ``zsadlab.pixel_threshold``,
    ``zsadlab.alpha``). ``batch``: the example batch traced (any batch runs).
    """
    import onnx  # the `export` extra

    graph = export_graph(model, class_names)
    if calibration is not None:
        calibration.check_model(model, calibration.class_name)
    size = model.config.image_size
    device = graph.text.device
    images = torch.zeros(batch, 3, size, size, device=device)  # [B, 3, S, S]
    inputs = (images,) if model.class_independent else (images, torch.zeros(batch, dtype=torch.long, device=device))
    names = ["images"] if model.class_independent else ["images", "class_index"]
    axes = {name: {0: "batch"} for name in names + ["scores", "maps"]}
    with atomic_path(out) as tmp, warnings.catch_warnings(), plain_attention():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic: the image size is fixed by design
        torch.onnx.export(graph, inputs, str(tmp), input_names=names, output_names=["scores", "maps"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        exported = onnx.load(str(tmp))
        for key, value in graph_metadata(model, class_names, calibration).items():
            exported.metadata_props.add(key=key, value=value)
        onnx.save(exported, str(tmp))
    return Path(out)
