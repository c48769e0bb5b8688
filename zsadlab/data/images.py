"""Reading images and masks from disk as plain numpy arrays.

Every reader returns one array and converts the formats real datasets ship:
16-bit and palette PNGs, RGBA, grayscale and CMYK all become 8-bit RGB (images)
or {0, 1} masks (the official ``> 0`` rule). EXIF rotation is applied. Unreadable,
truncated or decompression-bomb-sized files raise :class:`DatasetError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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
    """Open and decode ``path`` completely, EXIF orientation applied (PIL is lazy: truncation shows only on load)."""
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)  # a copy, upright as a photo viewer shows it
    except FileNotFoundError:
        raise DatasetError(
            f"image not found: {path}. Restore it, or re-run `zsadlab data prepare` if it belongs to a prepared dataset."
        ) from None
    except Image.DecompressionBombError as err:
        raise DatasetError(f"image {path} is too large to read safely ({err}): downscale it or remove it.") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"cannot read image {path} ({err}). The file is truncated or not an image: "
            "re-download the dataset or delete this file."
        ) from None


SENSOR_DEPTHS = (8, 10, 12, 14, 16)  # bit depths cameras and scanners write into 16-bit files


def _to_8bit(img: Image.Image) -> Image.Image:
    """8-bit version of a 16/32-bit integer or float image.

    Integer images are scaled by their actual bit depth: the smallest of
    ``SENSOR_DEPTHS`` that holds their largest value (a 12-bit scan stored in a
    16-bit PNG is scaled from 0..4095, not 0..65535). Float images in 0..1 are
    scaled to 0..255; other values are clipped.
    """
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return img
    values = np.asarray(img, dtype=np.float64)  # [H, W]
    if img.mode == "F":
        top = 1.0 if values.max() <= 1.0 else 255.0
    else:
        depth = next((d for d in SENSOR_DEPTHS if values.max() < 2**d), SENSOR_DEPTHS[-1])
        top = 2.0**depth - 1
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))


def load_rgb(path: str | Path) -> np.ndarray:
    """The image at ``path`` as uint8 RGB, shape [H, W, 3].

    Grayscale is replicated to three channels, palette images are expanded,
    RGBA is composited on black (alpha dropped, as ``PIL.convert('RGB')``),
    16-bit images are scaled down to 8 bits, EXIF rotation is applied.
    """
    img = _to_8bit(_open_fully(Path(path)))
    return np.array(img.convert("RGB"))  # writable copy


def load_mask_values(path: str | Path) -> np.ndarray:
    """The values of the mask file at ``path`` as the official reader sees them, uint8 [H, W].

    AnomalyCLIP ``dataset.py`` reads ``Image.open(mask).convert('L')``: colour and
    palette masks become luminance. 16-bit masks are scaled like images.
    """
    img = _to_8bit(_open_fully(Path(path)))
    return np.array(img.convert("L"))  # writable copy


def load_mask(path: str | Path) -> np.ndarray:
    """The mask at ``path`` as a {0, 1} uint8 array [H, W]: every non-zero pixel is anomalous.

    This is the official rule (AnomalyCLIP ``dataset.py``: ``convert('L') > 0``), so a
    multi-defect mask with labels {0, 1, 2} keeps all its regions. Integer 16-bit
    masks are compared before any scaling, so a label 1 in a 16-bit file stays.
    """
    img = _open_fully(Path(path))
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return (np.asarray(img) > 0).astype(np.uint8)
    return (np.array(img.convert("L")) > 0).astype(np.uint8)


EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as :func:`load_rgb` returns the image, read from the header only (no decoding)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(EXIF_ORIENTATION) in TRANSPOSING_ORIENTATIONS:
                return height, width
            return width, height
    except Image.DecompressionBombError as err:
        raise DatasetError(f"image {path} is too large to read safely ({err}): downscale it or remove it.") from None
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
