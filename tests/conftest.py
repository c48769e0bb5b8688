"""Shared fixtures: the tiny CLIP, the offline real-data folder and small image/mask writers."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (or ``$ZSADLAB_SHARED_DATA``); the test is skipped when it is absent."""
    root = Path(os.environ.get("ZSADLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real sample data not found at {root} (set ZSADLAB_SHARED_DATA)")
    return root


@pytest.fixture(scope="module")
def clip():
    """The tiny ViT-L-14-shaped CLIP of the smoke profile (seed 0), one per test module."""
    from zsadlab.backbone import tiny_clip

    return tiny_clip("vit14-112", seed=0)


@pytest.fixture(scope="module")
def smoke():
    """The smoke profile (tiny CLIPs), without its banner."""
    from zsadlab.profiles import get_profile

    return get_profile("smoke", quiet=True)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """Both synthetic smoke datasets, prepared (seed 0) in one folder per test module."""
    from zsadlab.data import ensure_dataset

    base = tmp_path_factory.mktemp("data")
    return {name: ensure_dataset(name, base, seed=0) for name in ("synthetic_industrial", "synthetic_ultrasound")}


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, size=(W, H), value=..., mode="RGB")``: a flat or random image file, parents created."""
    rng = np.random.default_rng(0)

    def write(path: Path, size: tuple[int, int] = (16, 12), value: int | None = None, mode: str = "RGB") -> Path:
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        array = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array, mode).save(path)
        return path

    return write


@pytest.fixture
def write_mask() -> Callable[..., Path]:
    """``write_mask(path, size=(W, H), box=(y0, y1, x0, x1), high=255)``: a mask with one filled box."""

    def write(path: Path, size: tuple[int, int] = (16, 12), box=(2, 6, 3, 9), high: int = 255) -> Path:
        array = np.zeros((size[1], size[0]), np.uint8)
        if box is not None:
            array[box[0] : box[1], box[2] : box[3]] = high
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
        return path

    return write


@pytest.fixture(scope="session")
def synthetic_industrial_root(tmp_path_factory) -> Path:
    """A ``synthetic_industrial`` root generated once per test session (seed 0)."""
    from zsadlab.data import prepare

    return prepare("synthetic_industrial", out=tmp_path_factory.mktemp("synth") / "synthetic_industrial")


TOY_FOLDERS = {"good": 3, "crack": 2, "hole": 1}  # test images per defect folder, in each of the classes a and b


@pytest.fixture
def marked_toy_set(tmp_path, write_image, write_mask) -> Callable[[str], Path]:
    """``marked_toy_set(name)``: a tiny prepared test split whose marker names registry dataset ``name``.

    Classes ``a`` and ``b``, each with ``test/{good,crack,hole}`` (:data:`TOY_FOLDERS` images), 8x8 px,
    every file a different flat grey; each defect image has a box mask of its own.
    """
    from zsadlab.data.prepare import MARKER, MARKER_PREFIX

    def make(name: str) -> Path:
        root = tmp_path / name
        grey = iter(range(10, 250, 5))
        for class_name in ("a", "b"):
            for defect, count in TOY_FOLDERS.items():
                for i in range(count):
                    write_image(root / class_name / "test" / defect / f"{i:03d}.png", size=(8, 8), value=next(grey))
                    if defect != "good":
                        write_mask(root / class_name / "ground_truth" / defect / f"{i:03d}_mask.png", size=(8, 8),
                                   box=(i, i + 3, 2, 6))
        (root / MARKER).write_text(f"{MARKER_PREFIX}{name}\n", encoding="utf-8")
        return root

    return make


@pytest.fixture
def lock_holder():
    """``lock_holder(folder)``: a real second process holding ``folder``'s one-writer lock (``folder_lock``)
    until the test ends (or it is killed); returns its ``Popen``."""
    import subprocess
    import sys

    started = []

    def hold(folder: Path) -> "subprocess.Popen":
        code = ("import sys; from zsadlab.utils import folder_lock\n"
                "with folder_lock(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.read()")
        process = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, cwd=REPO,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        started.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield hold
    for process in started:
        if process.poll() is None:
            process.stdin.close()
            process.wait(timeout=600)
