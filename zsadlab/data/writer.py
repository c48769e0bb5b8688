"""``LayoutWriter``: puts images and masks into the common layout (used by every converter).

Converters and synthetic generators only decide *what* is normal, anomalous and
which mask belongs to which image; this class decides *where* files go, copies
images byte for byte and re-encodes masks as 0/255 PNG by the official ``> 0``
rule (lossless for what the official reader sees). A mask whose size differs from
its image's is kept as it is, with a warning: the dataset resizes it as the
official code does.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .images import image_size, load_mask, load_rgb, save_mask, save_png
from .layout import NORMAL, mask_file, path_component

ImageSource = Path | np.ndarray  # a file to copy, or a uint8 [H, W] / [H, W, 3] array to save as PNG
MaskSource = Path | np.ndarray | None  # a mask file, a {0,1} array [H, W], or None (image-level only)


class LayoutWriter:
    """Writes one dataset root in the common layout; refuses to overwrite a file it wrote.

    With ``masks=True`` every class gets a ``ground_truth/`` folder, even one that
    (in a subset) holds only normal images, so its normal images read as having
    all-zero masks rather than no pixel labels. Every raw image is decoded before it
    is copied: an unreadable one (corrupt, zero bytes, missing) is skipped and
    listed in ``skipped`` (``prepare`` warns with the list) rather than failing later.
    """

    def __init__(self, root: str | Path, masks: bool = False):
        self.root = Path(root)
        self.masks = masks
        self.count = 0
        self.skipped: list[str] = []  # one line per unreadable raw image

    def normal(self, image: ImageSource, class_name: str, name: str, split: str = "test") -> Path | None:
        """Store a normal image as ``<class>/<split>/good/<name>`` (None if it was skipped)."""
        _check_names(image, class_name, name)
        if self.masks:
            (self.root / class_name / "ground_truth").mkdir(parents=True, exist_ok=True)
        return self._image(image, self.root / class_name / split / NORMAL / name)

    def anomalous(
        self, image: ImageSource, class_name: str, defect: str, name: str, mask: MaskSource = None
    ) -> Path | None:
        """Store an anomalous image as ``<class>/test/<defect>/<name>`` and its mask (if any) beside it."""
        _check_names(image, class_name, defect, name)
        if defect == NORMAL:
            raise DatasetError(f"{name}: the defect name {NORMAL!r} is reserved for normal images.")
        target = self._image(image, self.root / class_name / "test" / defect / name)
        if target is not None and mask is not None:
            array = load_mask(mask) if isinstance(mask, Path) else mask
            _warn_if_other_size(array, image)
            save_mask(array, mask_file(self.root, class_name, defect, name))
        return target

    def _image(self, image: ImageSource, target: Path) -> Path | None:
        """Copy (after checking it decodes) or save ``image`` to ``target``; None if unreadable."""
        if target.exists():
            raise DatasetError(
                f"two raw images map to {target.relative_to(self.root)} (the second is {_name(image)}): "
                "rename one of them in the raw folder."
            )
        if isinstance(image, Path):
            try:
                load_rgb(image)
            except DatasetError as err:
                self.skipped.append(str(err))
                return None
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(image, Path):
            shutil.copyfile(image, target)
        else:
            save_png(image, target)
        self.count += 1
        return target


def _check_names(image: ImageSource, *names: str) -> None:
    """Every name that becomes a path component is one plain name: nothing is written outside the root."""
    for name in names:
        path_component(name, _name(image))


def _warn_if_other_size(mask: np.ndarray, image: ImageSource) -> None:
    """Warn (naming the raw image) when a mask [H, W] and its image differ in size."""
    width, height = image_size(image) if isinstance(image, Path) else image.shape[1::-1]
    if mask.shape != (height, width):
        warnings.warn(
            f"the mask of {_name(image)} is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}; "
            "kept as is, the dataset resizes it as the official code does.",
            stacklevel=3,
        )


def _name(source: ImageSource | MaskSource) -> str:
    """How messages name a raw file (or an array a converter computed)."""
    return str(source) if isinstance(source, Path) else "(computed array)"
