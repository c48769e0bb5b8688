"""Atomic creation of whole directories.

A dataset folder is built in a hidden temporary directory beside its target and
renamed into place only when complete, so an interrupted download, extraction
or conversion never leaves a half-written folder that looks like a dataset. The hidden
folder carries its process id; one left by a killed process is removed by the next build.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..utils import process_alive
from .errors import DatasetError


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``target`` on success.

    On an exception the temporary directory is deleted and ``target`` is left as
    it was. With ``overwrite=True`` an existing ``target`` is replaced (moved
    aside, then deleted after the rename).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise DatasetError(f"{target} already exists: delete it, choose another folder or pass --force.")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_dirs(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".partial", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); a dataset folder should not be
    try:
        yield tmp
        _replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_orphan_dirs(target: Path) -> None:
    """Delete the ``.<name>.<pid>-<random>.partial`` / ``.old`` folders of ``target`` left by processes that no
    longer run (an interrupted prepare); those of a running process are left alone."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"(\d+)-[^.]+\.(partial|old)")
    for candidate in target.parent.glob(f".{target.name}.*"):
        found = pattern.fullmatch(candidate.name)
        if found and candidate.is_dir() and not candidate.is_symlink() and not process_alive(int(found.group(1))):
            shutil.rmtree(candidate)


def _umask() -> int:
    """The process's current umask (reading it requires setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``, removing an old ``target`` only after the rename."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old)
