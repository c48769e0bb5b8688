"""Reading images and masks from disk as plain numpy arrays.

Every reader returns one array and converts the formats real datasets ship:
16-bit and palette PNGs, RGBA, grayscale and CMYK all become 8-bit RGB (images)
or 8-bit grayscale (masks). Unreadable or truncated files raise
:class:`DatasetError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """True for a visible file whose suffix is an image format we read."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (empty if it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _open_fully(path: Path) -> Image.Image:
    """Open and decode ``path`` completely (PIL is lazy: truncation shows only on load)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}. Re-run `zsadlab data prepare` for this dataset.") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"cannot read image {path} ({err}). The file is truncated or not an image: "
            "re-download the dataset or delete this file."
        ) from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """8-bit version of a 16/32-bit integer or float image.

    Integer images whose values exceed 255 are scaled from 0..65535; float images
    in 0..1 are scaled to 0..255; other values are clipped.
    """
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return img
    values = np.asarray(img, dtype=np.float64)  # [H, W]
    if img.mode == "F":
        top = 1.0 if values.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if values.max() > 255 else 255.0
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))


def load_rgb(path: str | Path) -> np.ndarray:
    """The image at ``path`` as uint8 RGB, shape [H, W, 3].

    Grayscale is replicated to three channels, palette images are expanded,
    RGBA is composited on black (alpha dropped, as ``PIL.convert('RGB')``),
    16-bit images are scaled down to 8 bits.
    """
    img = _to_8bit(_open_fully(Path(path)))
    return np.array(img.convert("RGB"))  # writable copy


def load_mask_values(path: str | Path) -> np.ndarray:
    """The raw values of the mask file at ``path``, uint8 [H, W].

    Palette masks give their palette indices (the label, not a colour); colour
    masks are converted to luminance.
    """
    img = _to_8bit(_open_fully(Path(path)))
    return np.array(img if img.mode == "P" else img.convert("L"))  # writable copy


def is_binary(values: np.ndarray) -> bool:
    """True when a mask holds 0 and at most one other value (0/255, 0/1, palette 0/k...)."""
    return np.unique(values[values > 0]).size <= 1


def binarise(values: np.ndarray) -> np.ndarray:
    """A {0, 1} uint8 mask [H, W] from raw mask values.

    A binary mask (see :func:`is_binary`) keeps every non-zero pixel, as the
    official AnomalyCLIP reader (``mask > 0``) does. Any other mask (JPEG
    artefacts, anti-aliased edges) is thresholded at 127: value > 127 is anomalous.
    """
    return ((values > 0) if is_binary(values) else (values > 127)).astype(np.uint8)


def load_mask(path: str | Path) -> np.ndarray:
    """The mask at ``path`` as a {0, 1} uint8 array [H, W] (see :func:`binarise`)."""
    return binarise(load_mask_values(path))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) read from the file header only (fast, no decoding)."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot read image {path} ({err}). Re-download it or delete this file.") from None


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 [H, W] or [H, W, 3] array as PNG (deterministic bytes: no metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def save_mask(mask: np.ndarray, path: Path) -> Path:
    """Write a {0, 1} or boolean mask [H, W] as a 0/255 PNG (the MVTec AD convention)."""
    return save_png((mask > 0).astype(np.uint8) * 255, path)
