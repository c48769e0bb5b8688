"""``AnomalyDataset``: the torch Dataset over a prepared (common-layout) root, and ``collate``.

Images follow one of the two official test transforms (``RESIZE_MODES``), then
``ToTensor`` and ``Normalize(mean, std)`` with OpenAI CLIP statistics:

- ``"squash"`` -- AnomalyCLIP ``utils.py`` ``get_transform``: ``Resize((S, S), BICUBIC)``
  then ``CenterCrop(S)`` (a no-op after a square resize). The aspect ratio changes.
- ``"shorter_side_center_crop"`` -- InCTRL ``engine_test.py`` / ``main.py``: ``Resize(S, BICUBIC)``
  (shorter side to S, longer side ``int(S * long / short)``) then ``CenterCrop(S)``.

Masks follow the official AnomalyCLIP rule (``dataset.py`` + ``utils.py`` + ``test.py``):
``> 0`` at native size, times 255, the same geometry with BILINEAR (antialiased, on the
PIL image, as torchvision's ``Resize`` on PIL images), ``ToTensor``, then ``> 0.5``.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetError
from .images import load_mask, load_rgb
from .layout import Sample, samples

RESIZE_MODES = ("squash", "shorter_side_center_crop")  # AnomalyCLIP's, InCTRL's
# Above this many pixels the resized image of "shorter_side_center_crop" is never made: PIL resamples only
# the box the centre crop keeps (the same sampling positions and filter scale), so an image of extreme
# aspect ratio (10000x1 would need 2.4e6 x 240) costs what an ordinary one does.
MAX_INTERMEDIATE_PIXELS = 1 << 24


def checked_resize_mode(resize: str) -> str:
    """``resize`` if it is one of ``RESIZE_MODES``, else :class:`DatasetError`."""
    if resize not in RESIZE_MODES:
        raise DatasetError(f"unknown resize mode {resize!r}: use one of {RESIZE_MODES}.")
    return resize


def resized(img: Image.Image, size: int | None, resize: str, resample: int) -> Image.Image:
    """``img`` through the official geometry of ``resize`` (see ``RESIZE_MODES``) to [S, S]; ``None`` keeps it."""
    checked_resize_mode(resize)
    if size is None:
        return img
    if resize == "squash":
        return img.resize((size, size), resample)
    width, height = img.size  # torchvision Resize(int): shorter side -> size, longer side truncated
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    left = int(round((new_w - size) / 2.0))  # torchvision CenterCrop offsets
    top = int(round((new_h - size) / 2.0))
    if new_w * new_h > MAX_INTERMEDIATE_PIXELS:  # e.g. 30000x1: resample only the part the crop keeps
        sx, sy = width / new_w, height / new_h
        return img.resize((size, size), resample, box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))
    return img.resize((new_w, new_h), resample).crop((left, top, left + size, top + size))


def resized_rgb(rgb: np.ndarray, size: int | None, resize: str = "squash") -> np.ndarray:
    """[H, W, 3] uint8 -> [S, S, 3] uint8, bicubic through the geometry of ``resize``."""
    return np.array(resized(Image.fromarray(rgb), size, resize, Image.BICUBIC))


def resized_mask(mask: np.ndarray, size: int | None, resize: str = "squash") -> np.ndarray:
    """[H, W] {0, 1} -> [S, S] {0, 1} by the official rule: ×255, bilinear, then ``/ 255 > 0.5``."""
    scaled = resized(Image.fromarray((mask > 0).astype(np.uint8) * 255), size, resize, Image.BILINEAR)
    return (np.array(scaled) > 127).astype(np.uint8)  # v / 255 > 0.5  <=>  v >= 128 for uint8 v


def normalised_tensor(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, H, W] float32, ``(x / 255 - mean) / std`` (ToTensor + Normalize)."""
    scaled = (rgb.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)  # [H, W, 3]
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))  # [3, H, W]


def image_tensor(
    path: str | Path,
    size: int | None,
    resize: str = "squash",
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> torch.Tensor:
    """One image file (a dataset item or a user's own picture) -> [3, S, S] float, the official test transform."""
    return normalised_tensor(resized_rgb(load_rgb(path), size, resize), mean, std)


class AnomalyDataset(Dataset):
    """Images (and masks) of one split of a prepared dataset root.

    Args:
        root: a folder in the common layout or with an AnomalyCLIP ``meta.json``.
        split: ``"train"`` (normal images only), ``"test"``, or ``"inctrl_train"``: InCTRL's
            training pool, every image of both splits (``gen_train_json.py``).
        classes: keep only these class names (``None``: all).
        image_size: square side S; ``None`` keeps the native size (for plots).
        resize: ``"squash"`` (AnomalyCLIP's transform, the default) or
            ``"shorter_side_center_crop"`` (InCTRL's); see ``RESIZE_MODES``.
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
        resize: str = "squash",
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        require_masks: bool = False,
    ):
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.resize = checked_resize_mode(resize)
        self.mean, self.std = tuple(mean), tuple(std)
        self.samples: list[Sample] = _selected(samples(self.root, split), classes, self.root, split)
        if require_masks:
            _check_masks(self.samples, self.root)
        self._warned_mask_size = False

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

    def budget(self, classes: Sequence[str] | None = None, max_images_per_class: int | None = None,
               seed: int = 0) -> "AnomalyDataset":
        """The same dataset cut to a budget: only ``classes`` (``None``: all), and at most
        ``max_images_per_class`` images per class (``None``: all), drawn by :func:`budget_samples`
        (seeded, stratified by label, both labels kept). Works on every split."""
        view = copy.copy(self)
        view.samples = budget_samples(_selected(self.samples, classes, self.root, self.split), self.root,
                                      max_images_per_class, seed)
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
            "image": normalised_tensor(resized_rgb(rgb, self.image_size, self.resize), self.mean, self.std),
            "mask": None if mask is None else torch.from_numpy(mask).float(),  # [S, S]
            "label": sample.label,
            "class_name": sample.class_name,
            "defect": sample.defect,
            "path": str(sample.path),
        }

    def _mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray | None:
        """The {0, 1} uint8 mask [S, S] of ``sample`` by the official rule, or None (no pixel labels).

        A mask whose size differs from its image's is resized as the official code
        does (straight to [S, S]; to the image's size first when the geometry needs it),
        with one warning per dataset.
        """
        if not sample.has_mask:
            return None
        if sample.mask_path is None:
            native = np.zeros(shape, dtype=np.uint8)
        else:
            native = load_mask(sample.mask_path)  # [h, w] {0, 1}
        if native.shape != shape:
            self._warn_mask_size(sample, native.shape, shape)
            if self.image_size is None or self.resize != "squash":
                scaled = Image.fromarray(native * 255).resize(shape[::-1], Image.BILINEAR)
                native = (np.array(scaled) > 127).astype(np.uint8)  # [H, W]
        return resized_mask(native, self.image_size, self.resize)

    def _warn_mask_size(self, sample: Sample, mask_shape: tuple[int, int], shape: tuple[int, int]) -> None:
        """Warn once per dataset that a mask and its image differ in size."""
        if self._warned_mask_size:
            return
        self._warned_mask_size = True
        warnings.warn(
            f"mask {sample.mask_path} is {mask_shape[1]}x{mask_shape[0]} but its image {sample.path} is "
            f"{shape[1]}x{shape[0]}; resized as the official code does (warned once per dataset).",
            stacklevel=3,
        )


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


def _draw_rank(sample: Sample, root: Path, seed: int) -> str:
    """The sample's place in the seeded draw: a hash of (seed, path relative to ``root``), so the
    draw depends on the seed and the files, never on the order they were listed in."""
    relative = sample.path.relative_to(root) if sample.path.is_relative_to(root) else sample.path
    return hashlib.sha256(f"{seed}:{relative.as_posix()}".encode()).hexdigest()


def _label_quota(n_normal: int, n_anomalous: int, budget: int) -> int:
    """How many of ``budget`` images are anomalous: the class's share, rounded, but at least one
    of each label when the class has both."""
    share = round(budget * n_anomalous / (n_normal + n_anomalous))
    if n_normal and n_anomalous:
        return min(max(share, 1), budget - 1)
    return share


def budget_samples(all_samples: list[Sample], root: Path, max_images_per_class: int | None,
                   seed: int = 0) -> list[Sample]:
    """At most ``max_images_per_class`` samples of each class, a seeded draw stratified by label.

    Each class keeps its anomalous share of the budget (rounded), and at least one normal and one
    anomalous image whenever it has both; within a label the samples with the lowest
    :func:`_draw_rank` are kept. The draw is deterministic for a seed and independent of file order;
    the kept samples stay in their original order. ``None`` keeps everything.
    """
    if max_images_per_class is None:
        return list(all_samples)
    if max_images_per_class < 1:
        raise DatasetError(f"max_images_per_class must be at least 1 (or None for all), got {max_images_per_class}.")
    kept = set()
    for class_name in sorted({s.class_name for s in all_samples}):
        by_label = [sorted((s for s in all_samples if s.class_name == class_name and s.label == label),
                           key=lambda s: _draw_rank(s, root, seed)) for label in (0, 1)]
        if len(by_label[0]) + len(by_label[1]) <= max_images_per_class:
            kept.update(id(s) for group in by_label for s in group)
            continue
        if by_label[0] and by_label[1] and max_images_per_class < 2:
            raise DatasetError(f"max_images_per_class=1 cannot keep both labels of class {class_name!r} in {root}; "
                               "use at least 2.")
        n_anomalous = _label_quota(len(by_label[0]), len(by_label[1]), max_images_per_class)
        kept.update(id(s) for s in by_label[1][:n_anomalous] + by_label[0][:max_images_per_class - n_anomalous])
    return [s for s in all_samples if id(s) in kept]


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
