"""Synthetic smoke datasets, generated from a seed in about a second, in the common layout.

``synthetic_industrial``: three classes cut from scikit-image's bundled real
photographs (``brick`` and ``gravel`` textures, a ``coffee`` cup object) with four
kinds of painted defect: scratch, hole, stain and cut-paste. ``synthetic_ultrasound``:
a TN3K-like thyroid set, speckled tissue with hypoechoic (darker) nodules.

Every mask is exact: it is the set of pixels the defect painter changed. The same
seed gives byte-identical files (numpy ``default_rng``, PNG without metadata).
Per class: 16 train good, 6 test good, 8 test defective images of ``SIZE`` px. Sixteen
normal training images are twice the largest k of the few-shot notebook (8), so every k draws
a different set of sample prompts for every prompt seed; the last eight of them are drawn
after the test images, which therefore stay the same for a given seed as with eight.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import skimage.data
from PIL import Image
from scipy import ndimage
from skimage import draw

from .writer import LayoutWriter

SIZE = 160
N_TRAIN_GOOD, N_TEST_GOOD, N_TEST_DEFECT = 16, 6, 8
N_TRAIN_GOOD_FIRST = 8  # drawn before the test images (the rest after them)

# ---------------------------------------------------------------- normal images


def _texture(photo: np.ndarray, tint: tuple[float, float, float]) -> Callable[[np.random.Generator], np.ndarray]:
    """A sampler of random flipped crops of a grayscale texture photo, tinted, [SIZE, SIZE, 3] float in [0, 1]."""

    def sample(rng: np.random.Generator) -> np.ndarray:
        side = 256
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = photo[y : y + side, x : x + side]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        gray = _resized(crop, SIZE) * rng.uniform(0.92, 1.08)  # [S, S]
        return np.clip(gray[..., None] * np.array(tint), 0, 1)  # [S, S, 3]

    return sample


def _object(photo: np.ndarray) -> Callable[[np.random.Generator], np.ndarray]:
    """A sampler of slightly shifted square crops around the centre of an RGB object photo."""

    def sample(rng: np.random.Generator) -> np.ndarray:
        side = min(photo.shape[:2]) - 40
        cy, cx = photo.shape[0] // 2 + rng.integers(-15, 16), photo.shape[1] // 2 + rng.integers(-15, 16)
        crop = photo[cy - side // 2 : cy + side // 2, cx - side // 2 : cx + side // 2]
        return np.clip(_resized(crop, SIZE) * rng.uniform(0.95, 1.05), 0, 1)  # [S, S, 3]

    return sample


def _resized(array: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W(, 3)] -> float [size, size(, 3)] in [0, 1], bicubic."""
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0


def industrial_classes() -> dict[str, Callable[[np.random.Generator], np.ndarray]]:
    """Class name -> sampler of normal images (real photographs bundled with scikit-image)."""
    return {
        "brick": _texture(skimage.data.brick(), (1.0, 0.72, 0.58)),
        "coffee": _object(skimage.data.coffee()),
        "gravel": _texture(skimage.data.gravel(), (0.9, 0.9, 0.85)),
    }


# ---------------------------------------------------------------- defects: (image, rng) -> (image, mask)


def _blend(image: np.ndarray, region: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """``image`` with ``colour`` alpha-blended over the boolean ``region`` [S, S]."""
    out = image.copy()
    out[region] = (1 - alpha) * out[region] + alpha * colour
    return out


def scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin polyline of 2-3 segments, dark or bright."""
    line = np.zeros(image.shape[:2], dtype=bool)
    points = rng.integers(20, SIZE - 20, size=(rng.integers(3, 5), 2))
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        line[draw.line(r0, c0, r1, c1)] = True
    region = ndimage.binary_dilation(line, iterations=int(rng.integers(1, 3)))
    colour = np.full(3, 0.05 if rng.random() < 0.5 else 0.95)
    return _blend(image, region, colour, 0.85), region


def hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark disc, shaded darker towards its centre."""
    radius = rng.uniform(6, 14)
    cy, cx = rng.uniform(radius + 4, SIZE - radius - 4, size=2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    distance = np.hypot(yy - cy, xx - cx) / radius  # [S, S], < 1 inside
    region = distance < 1
    out = image.copy()
    shade = (0.1 + 0.3 * distance[region])[:, None]  # darker in the middle
    out[region] = out[region] * shade
    return out, region


def stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An irregular brownish blob (thresholded smooth noise inside a disc), half transparent."""
    radius = rng.uniform(12, 22)
    cy, cx = rng.uniform(radius + 4, SIZE - radius - 4, size=2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    noise = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 4)
    region = (np.hypot(yy - cy, xx - cx) / radius + noise / noise.std() * 0.25) < 1
    return _blend(image, region, np.array([0.45, 0.3, 0.12]), 0.6), region


def cut_paste(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An elliptical patch from elsewhere in the image, rotated 90 degrees and pasted (CutPaste-style)."""
    half = int(rng.integers(10, 18))
    src = rng.integers(half, SIZE - half, size=2)
    dst = rng.integers(half, SIZE - half, size=2)
    patch = np.rot90(image[src[0] - half : src[0] + half, src[1] - half : src[1] + half])  # [2h, 2h, 3]
    ellipse = np.zeros((2 * half, 2 * half), dtype=bool)
    ellipse[draw.ellipse(half, half, half - 1, half * 0.6, shape=ellipse.shape)] = True
    region = np.zeros(image.shape[:2], dtype=bool)
    window = (slice(dst[0] - half, dst[0] + half), slice(dst[1] - half, dst[1] + half))
    region[window] = ellipse
    out = image.copy()
    out[window][ellipse] = patch[ellipse] * 0.9 + 0.05  # slight contrast change keeps it visible
    return out, region


DEFECTS = {"scratch": scratch, "hole": hole, "stain": stain, "cut_paste": cut_paste}


# ---------------------------------------------------------------- ultrasound


def ultrasound_tissue(rng: np.random.Generator) -> np.ndarray:
    """Echogenicity of normal thyroid tissue [S, S] in (0, 1): smooth layers, attenuated with depth."""
    structure = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 8)
    layers = 0.08 * np.sin(np.linspace(0, rng.uniform(6, 10), SIZE) + rng.uniform(0, 6))[:, None]
    depth = np.exp(-np.linspace(0, 0.9, SIZE))[:, None]  # deeper rows are darker
    return np.clip((0.55 + structure / structure.std() * 0.06 + layers) * depth, 0.05, 1)


def nodule(rng: np.random.Generator) -> np.ndarray:
    """A lobulated ellipse [S, S] bool: the nodule's region."""
    cy, cx = rng.uniform(40, SIZE - 40, size=2)
    a, b = rng.uniform(12, 30), rng.uniform(10, 22)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    theta = np.arctan2(v, u)
    lobes = 1 + 0.12 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.06 * np.sin(5 * theta + rng.uniform(0, 6))
    return np.hypot(u / a, v / b) < lobes


def speckled(echo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [S, S]: echogenicity times Rayleigh speckle (fully developed speckle), lightly blurred."""
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, size=echo.shape), 0.7)
    return np.clip(echo * speckle / 1.25 * 255, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- whole sets


def _uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8."""
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def synthetic_industrial(out: LayoutWriter, seed: int = 0) -> None:
    """Write the ``synthetic_industrial`` set (3 classes, 4 defect types with exact masks)."""
    for index, (class_name, sample) in enumerate(industrial_classes().items()):
        rng = np.random.default_rng([seed, index])
        for i in range(N_TRAIN_GOOD_FIRST):
            out.normal(_uint8(sample(rng)), class_name, f"{i:03d}.png", "train")
        for i in range(N_TEST_GOOD):
            out.normal(_uint8(sample(rng)), class_name, f"{i:03d}.png", "test")
        for i in range(N_TEST_DEFECT):
            defect = list(DEFECTS)[i % len(DEFECTS)]
            image, region = DEFECTS[defect](sample(rng), rng)
            out.anomalous(_uint8(image), class_name, defect, f"{i:03d}.png", region)
        for i in range(N_TRAIN_GOOD_FIRST, N_TRAIN_GOOD):
            out.normal(_uint8(sample(rng)), class_name, f"{i:03d}.png", "train")


def synthetic_ultrasound(out: LayoutWriter, seed: int = 0) -> None:
    """Write the ``synthetic_ultrasound`` set (class ``thyroid``, defect ``nodule``, grayscale)."""
    rng = np.random.default_rng([seed, 1000])
    for i in range(N_TRAIN_GOOD_FIRST):
        out.normal(speckled(ultrasound_tissue(rng), rng), "thyroid", f"{i:03d}.png", "train")
    for i in range(N_TEST_GOOD):
        out.normal(speckled(ultrasound_tissue(rng), rng), "thyroid", f"{i:03d}.png", "test")
    for i in range(N_TEST_DEFECT):
        tissue, region = ultrasound_tissue(rng), nodule(rng)
        echo = np.where(region, tissue * rng.uniform(0.3, 0.45), tissue)  # hypoechoic: darker inside
        out.anomalous(speckled(echo, rng), "thyroid", "nodule", f"{i:03d}.png", region)
    for i in range(N_TRAIN_GOOD_FIRST, N_TRAIN_GOOD):
        out.normal(speckled(ultrasound_tissue(rng), rng), "thyroid", f"{i:03d}.png", "train")
