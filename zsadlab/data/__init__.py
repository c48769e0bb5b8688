"""Datasets for zero/few-shot anomaly detection, all in one common layout (MVTec AD's).

Modules, one concept each:

- ``errors``     -- ``DatasetError``, the one exception for bad input
- ``images``     -- reading images and masks as numpy arrays (``load_rgb``, ``load_mask``: the official ``> 0``)
- ``layout``     -- the common layout and AnomalyCLIP's ``meta.json`` (``Sample``, ``samples``)
- ``writer``     -- ``LayoutWriter``, which converters use to write the layout
- ``converters`` -- raw download -> common layout, one per official script (see ``PROTOCOL.md``)
- ``synthetic``  -- the seeded smoke sets ``synthetic_industrial`` and ``synthetic_ultrasound``
- ``registry``   -- one entry per dataset: source, license, raw layout, converter
- ``files``, ``download`` -- atomic folders, verified resumable downloads, safe extraction
- ``prepare``    -- ``prepare``, ``ensure_dataset``, ``fetch_raw``, ``dataset_name`` (a root's registry name)
- ``dataset``    -- ``AnomalyDataset`` (torch, the official transforms: ``RESIZE_MODES``), ``image_tensor``, ``collate``

Typical use::

    root = ensure_dataset("synthetic_industrial", "data")
    ds = AnomalyDataset(root, split="test", image_size=224)
    batch = collate([ds[0], ds[1]])
"""
from .dataset import RESIZE_MODES, AnomalyDataset, collate, image_tensor
from .errors import DatasetError
from .images import load_mask, load_rgb
from .layout import Sample
from .prepare import dataset_name, ensure_dataset, fetch_raw, prepare
from .registry import names

__all__ = [
    "RESIZE_MODES",
    "AnomalyDataset",
    "DatasetError",
    "Sample",
    "collate",
    "dataset_name",
    "ensure_dataset",
    "fetch_raw",
    "image_tensor",
    "load_mask",
    "load_rgb",
    "names",
    "prepare",
]
