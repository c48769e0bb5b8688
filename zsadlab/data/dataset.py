"""``AnomalyDataset``: the torch Dataset over a prepared (common-layout) root, and ``collate``.

Transforms follow the official AnomalyCLIP / InCTRL test transforms:
``Resize((S, S), BICUBIC)`` then ``CenterCrop(S)`` (a no-op after a square
resize, so it is not repeated here), ``ToTensor``, ``Normalize(mean, std)``
with OpenAI CLIP statistics. Masks: nearest resize, values in {0, 1}.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetError
from .images import binarise, is_binary, load_mask_values, load_rgb
from .layout import Sample, samples


def resized_rgb(rgb: np.ndarray, size: int | None) -> np.ndarray:
    """[H, W, 3] uint8 -> [S, S, 3] uint8, bicubic (PIL, as torchvision's Resize on PIL images)."""
    if size is None:
        return rgb
    return np.array(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))


def resized_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    """[H, W] {0,1} -> [S, S] {0,1}, nearest neighbour."""
    if size is None:
        return mask
    return np.array(Image.fromarray(mask).resize((size, size), Image.NEAREST))


def normalised_tensor(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, H, W] float32, ``(x / 255 - mean) / std`` (ToTensor + Normalize)."""
    scaled = (rgb.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)  # [H, W, 3]
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))  # [3, H, W]


class AnomalyDataset(Dataset):
    """Images (and masks) of one split of a prepared dataset root.

    Args:
        root: a folder in the common layout or with an AnomalyCLIP ``meta.json``.
        split: ``"train"`` (normal images only) or ``"test"``.
        classes: keep only these class names (``None``: all).
        image_size: square side S; ``None`` keeps the native size (for plots).
        mean, std: normalisation (OpenAI CLIP statistics by default).
        require_masks: raise if an anomalous image has no mask (pixel-level evaluation and
            AnomalyCLIP training need them).

    ``ds[i]`` is a dict: ``image`` [3, S, S] float, ``mask`` [S, S] float in {0, 1}
    (all zeros for normal images, ``None`` when the dataset has no pixel labels),
    ``label`` int, ``class_name``, ``defect``, ``path`` (str).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        classes: Sequence[str] | None = None,
        image_size: int | None = 112,
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        require_masks: bool = False,
    ):
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.samples: list[Sample] = _selected(samples(self.root, split), classes, self.root, split)
        if require_masks:
            _check_masks(self.samples, self.root)
        self._warned_non_binary = False

    @property
    def classes(self) -> list[str]:
        """Class names present, in sorted order."""
        return sorted({s.class_name for s in self.samples})

    @property
    def labels(self) -> np.ndarray:
        """Image labels [N] (0 normal, 1 anomalous), in sample order."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def subset(self, class_name: str) -> "AnomalyDataset":
        """The same dataset restricted to one class (shares settings, re-reads nothing)."""
        view = copy.copy(self)
        view.samples = _selected(self.samples, [class_name], self.root, self.split)
        return view

    def excluding(self, paths) -> "AnomalyDataset":
        """The same dataset without the images at ``paths`` (e.g. few-shot prompts taken from it)."""
        drop = {str(Path(p)) for p in paths}
        view = copy.copy(self)
        view.samples = [s for s in self.samples if str(s.path) not in drop]
        return view

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        rgb = load_rgb(sample.path)  # [H, W, 3]
        mask = self._mask(sample, rgb.shape[:2])  # [H, W] or None
        return {
            "image": normalised_tensor(resized_rgb(rgb, self.image_size), self.mean, self.std),  # [3, S, S]
            "mask": None if mask is None else torch.from_numpy(resized_mask(mask, self.image_size)).float(),
            "label": sample.label,
            "class_name": sample.class_name,
            "defect": sample.defect,
            "path": str(sample.path),
        }

    def _mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray | None:
        """The {0, 1} uint8 mask [H, W] of ``sample`` at the image's native size, or None."""
        if not sample.has_mask:
            return None
        if sample.mask_path is None:
            return np.zeros(shape, dtype=np.uint8)
        values = load_mask_values(sample.mask_path)  # [H, W] uint8
        if values.shape != shape:
            raise DatasetError(
                f"mask {sample.mask_path} is {values.shape[1]}x{values.shape[0]} but its image {sample.path} is "
                f"{shape[1]}x{shape[0]}: masks must have their image's size. Re-export the mask or re-run prepare."
            )
        if not is_binary(values) and not self._warned_non_binary:
            self._warned_non_binary = True
            warnings.warn(
                f"{self.root}: mask {sample.mask_path} is not binary (more than one non-zero value); "
                "masks of this dataset are thresholded at 127 (warned once per dataset).",
                stacklevel=3,
            )
        return binarise(values)


def _selected(all_samples: list[Sample], classes: Sequence[str] | None, root: Path, split: str) -> list[Sample]:
    """Samples of the requested classes; :class:`DatasetError` for unknown classes or an empty result."""
    if classes is not None:
        known = {s.class_name for s in all_samples}
        unknown = sorted(set(classes) - known)
        if unknown:
            raise DatasetError(f"{root} ({split}) has no class {unknown}; available: {sorted(known)}.")
        all_samples = [s for s in all_samples if s.class_name in set(classes)]
    if not all_samples:
        hint = (
            "zero-shot datasets often have only a test split: use split='test'"
            if split == "train"
            else "re-run `zsadlab data prepare` for this dataset"
        )
        raise DatasetError(f"{root} has no {split} images: {hint}.")
    return all_samples


def _check_masks(all_samples: list[Sample], root: Path) -> None:
    """Raise when an anomalous sample lacks a mask (``require_masks=True``)."""
    missing = [s for s in all_samples if s.label == 1 and s.mask_path is None]
    if missing:
        raise DatasetError(
            f"anomalous image {missing[0].path} has no mask ({len(missing)} such images in {root}); masks are "
            f"required here. Add <class>/ground_truth/<defect>/<name>_mask.png files, or use an image-level "
            "evaluation (require_masks=False)."
        )


def collate(items: list[dict]) -> dict:
    """Stack dataset items into a batch (all images must share one size).

    Returns ``image`` [B, 3, S, S], ``mask`` [B, S, S] (zeros where an item has no mask),
    ``has_mask`` bool [B], ``label`` long [B], and lists ``class_name``, ``defect``, ``path``.
    """
    images = torch.stack([it["image"] for it in items])  # [B, 3, S, S]
    blank = torch.zeros(images.shape[-2:])  # [S, S]
    return {
        "image": images,
        "mask": torch.stack([blank if it["mask"] is None else it["mask"] for it in items]),  # [B, S, S]
        "has_mask": torch.tensor([it["mask"] is not None for it in items], dtype=torch.bool),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "class_name": [it["class_name"] for it in items],
        "defect": [it["defect"] for it in items],
        "path": [it["path"] for it in items],
    }
