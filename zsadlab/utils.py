"""Small shared utilities: seeding, device choice and atomic file writes.

Everything here is side-effect free at import time (no hidden globals): the
caller decides when to seed and which device to use.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) and set cuDNN flags.

    ``deterministic=True`` asks cuDNN for deterministic kernels and turns off
    its autotuner, so that two runs with one seed give the same numbers.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def pick_device(preferred: str | None = None) -> torch.device:
    """Return ``preferred`` if given (``"cpu"``, ``"cuda:1"``...), else cuda > mps > cpu.

    The environment variable ``ZSADLAB_DEVICE`` overrides the automatic choice.
    """
    choice = preferred or os.environ.get("ZSADLAB_DEVICE")
    if choice and choice != "auto":
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Readers never see a half-written file: either the old file or the complete
    new one exists. On an exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a truncated file behind."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(..., weights_only=True)`` with an error that names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. Check the path (it must be a file).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with code objects, not a torch file...
        raise ValueError(
            f"could not read {what} {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "It must be a complete file written by torch.save holding only tensors and plain "
            "containers (loaded with weights_only=True); re-download or re-save it."
        ) from None
