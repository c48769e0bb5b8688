"""``LayoutWriter``: puts images and masks into the common layout (used by every converter).

Converters and synthetic generators only decide *what* is normal, anomalous and
which mask belongs to which image; this class decides *where* files go, copies
images byte for byte, re-encodes masks as 0/255 PNG and checks that each mask
has its image's size.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .images import image_size, load_mask, save_mask, save_png
from .layout import NORMAL, mask_file

ImageSource = Path | np.ndarray  # a file to copy, or a uint8 [H, W] / [H, W, 3] array to save as PNG
MaskSource = Path | np.ndarray | None  # a mask file, a {0,1} array [H, W], or None (image-level only)


class LayoutWriter:
    """Writes one dataset root in the common layout; refuses to overwrite a file it wrote.

    With ``masks=True`` every class gets a ``ground_truth/`` folder, even one that
    (in a subset) holds only normal images, so its normal images read as having
    all-zero masks rather than no pixel labels.
    """

    def __init__(self, root: str | Path, masks: bool = False):
        self.root = Path(root)
        self.masks = masks
        self.count = 0

    def normal(self, image: ImageSource, class_name: str, name: str, split: str = "test") -> Path:
        """Store a normal image as ``<class>/<split>/good/<name>``."""
        if self.masks:
            (self.root / class_name / "ground_truth").mkdir(parents=True, exist_ok=True)
        return self._image(image, self.root / class_name / split / NORMAL / name)

    def anomalous(self, image: ImageSource, class_name: str, defect: str, name: str, mask: MaskSource = None) -> Path:
        """Store an anomalous image as ``<class>/test/<defect>/<name>`` and its mask (if any) beside it."""
        if defect == NORMAL:
            raise DatasetError(f"{name}: the defect name {NORMAL!r} is reserved for normal images.")
        target = self._image(image, self.root / class_name / "test" / defect / name)
        if mask is not None:
            array = load_mask(mask) if isinstance(mask, Path) else mask
            _check_same_size(array, target, mask)
            save_mask(array, mask_file(self.root, class_name, defect, name))
        return target

    def _image(self, image: ImageSource, target: Path) -> Path:
        """Copy or save ``image`` to ``target`` (PNG when given an array)."""
        if target.exists():
            raise DatasetError(f"two raw images map to {target}: the raw folder has duplicate names.")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(image, Path):
            shutil.copyfile(image, target)
        else:
            save_png(image, target)
        self.count += 1
        return target


def _check_same_size(mask: np.ndarray, image: Path, source: MaskSource) -> None:
    """Raise when a mask [H, W] and the image written at ``image`` differ in size."""
    width, height = image_size(image)
    if mask.shape != (height, width):
        raise DatasetError(
            f"mask {source if isinstance(source, Path) else '(array)'} is {mask.shape[1]}x{mask.shape[0]} but "
            f"its image is {width}x{height} ({image.name}): fix or remove this pair in the raw folder."
        )
