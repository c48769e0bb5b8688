"""Small shared utilities: seeding, device choice, atomic file writes and safe weight reads.

Everything here is side-effect free at import time (no hidden globals): the
caller decides when to seed and which device to use.

Writes: :func:`check_writable` tests an output folder before any compute;
:func:`atomic_path` and the ``*_atomic`` writers write beside the target as
``.<name>.<pid>-<random>.tmp``, fsync it, give it the user's umask and rename it
into place. A temporary left by a killed process is removed on the next write of
that target. Any write failure becomes one :class:`OutputError` line naming the path.

One writer per folder: :func:`folder_lock` holds an advisory ``fcntl.flock`` on ``<folder>/.zsadlab.lock``
(which records the holder's pid) for as long as a process writes a run folder; a second process is
refused with one :class:`FolderBusyError` line naming the folder and the holder's pid. The kernel drops
the lock when its process dies, so a lock file left by a killed process is simply taken over.

Reads: :func:`load_torch_file` (``torch.load`` with ``weights_only=True``) and
:func:`load_torchscript_tensors` (the tensors of a TorchScript archive, read
without running its code) never suggest loading a file unsafely.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import io
import json
import math
import os
import pickle
import random
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.jit import _pickle as jit_pickle


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


DEVICE_ENV = "ZSADLAB_DEVICE"


def square_side(count) -> int:
    """The side of a square grid of ``count`` cells (e.g. patch tokens), rounded down; a plain int
    also while torch traces a graph for ONNX, where sizes are tensors (constants of the export)."""
    return math.isqrt(int(count))


def pick_device(preferred: str | None = None) -> torch.device:
    """Return ``preferred`` if given (``"cpu"``, ``"cuda:1"``...), else cuda > mps > cpu.

    The environment variable ``ZSADLAB_DEVICE`` overrides the automatic choice.
    """
    choice = preferred or os.environ.get(DEVICE_ENV)
    if choice and choice != "auto":
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class OutputError(ValueError):
    """An output file or folder cannot be written (read-only, below a file, disk full...)."""


def _umask() -> int:
    """The process's umask (reading it requires setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _output_error(path: Path, err: OSError) -> OutputError:
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on the device (disk or quota full)"
    return OutputError(f"cannot write {path}: {reason}. Free some space or choose another output folder.")


def check_writable(folder: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Make sure ``folder`` can hold outputs, before any compute; return it.

    Creates the folder (and its parents) if needed, then writes, fsyncs and removes
    a small probe file in it, so a read-only folder, a path equal to or below a
    file, or a full disk raise one :class:`OutputError` naming the path. With
    ``need_bytes`` the free space is checked too.
    """
    folder = Path(folder).expanduser()
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "is" if blocker == folder else f"is below {blocker}, which is"
        raise OutputError(f"cannot write to {folder}: it {where} a file, not a folder. Choose another output folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".zsadlab-write-check.", dir=folder)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise _output_error(folder, err) from None
    if free < need_bytes:
        raise OutputError(f"cannot write to {folder}: {free / 2**20:.0f} MiB free, about {need_bytes / 2**20:.0f} MiB "
                          "needed. Free some space or choose another output folder.")
    return folder


LOCK_FILE = ".zsadlab.lock"
_held_locks: dict[Path, int] = {}  # folder -> how many nested folder_lock()s of this process hold it


class FolderBusyError(OutputError):
    """Another process is writing the same output folder."""


def _lock_holder(lock: Path) -> str:
    try:
        return lock.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the one-writer lock of ``folder`` (created if needed) while the block runs; yield the folder.

    An exclusive, non-blocking ``fcntl.flock`` on ``<folder>/.zsadlab.lock``: if another process
    holds it, :class:`FolderBusyError` names the folder and that process's pid. Re-entrant within a
    process (a nested call for the same folder holds nothing more). A lock file whose process died is
    taken over (the kernel released its lock); the file is removed when the lock is released.
    """
    folder = check_writable(folder).resolve()
    if folder in _held_locks:
        _held_locks[folder] += 1
        try:
            yield folder
        finally:
            _held_locks[folder] -= 1
        return
    lock = folder / LOCK_FILE
    fd = _locked(lock, folder)
    _held_locks[folder] = 1
    try:
        yield folder
    finally:
        del _held_locks[folder]
        lock.unlink(missing_ok=True)  # still held: a process waiting on this file finds it gone and retries
        os.close(fd)


def _locked(lock: Path, folder: Path) -> int:
    """An open descriptor of ``lock`` that holds its flock and is still the file at that path, with our pid in it."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as err:
            raise _output_error(lock, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusyError(f"{folder} is being written by another zsadlab process (pid {_lock_holder(lock)}); "
                                  "wait for it to finish, or choose another output folder.") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:  # its holder removed it as we locked: lock the new one
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_orphans(path: Path) -> None:
    """Delete temporaries of ``path`` left by processes that no longer run (``.<name>.<pid>-<rand>.tmp``)."""
    pattern = re.compile(re.escape(_tmp_prefix(path)) + r"(\d+)-[^.]+\.tmp")
    for candidate in path.parent.glob(_tmp_prefix(path) + "*.tmp"):
        match = pattern.fullmatch(candidate.name)
        if match and not process_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """True while process ``pid`` runs (also another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; fsync it and rename it onto ``path`` on success.

    Readers never see a half-written file: either the old file or the complete
    new one exists. The new file gets the user's umask (``0o666 & ~umask``), not
    the private mode of ``mkstemp``. On an exception the temporary file is removed;
    an ``OSError`` about the file (read-only, disk full...) becomes an :class:`OutputError`.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        tmp_path.chmod(0o666 & ~_umask())
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except OSError as err:
        ours = {str(tmp_path), str(path), *(str(p) for p in path.parents)}
        if err.filename is not None and str(err.filename) not in ours:
            raise  # about another file (e.g. an input the caller reads): not a write failure
        raise _output_error(path, err) from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a truncated file behind.

    torch reports a full disk as ``RuntimeError: ... unexpected pos ...``; that and
    every other write failure become one :class:`OutputError` naming ``path``.
    """
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:
            if "unexpected pos" not in str(err) and "PytorchStreamWriter" not in str(err):
                raise
            raise OutputError(f"cannot write {path}: the disk is full or the file system refused the write "
                              "(torch: unexpected position). Free some space or choose another output folder.") from None
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


# ---------------------------------------------------------------------------
# Reading weights without running code from the file
# ---------------------------------------------------------------------------


def _load_problem(err: Exception) -> str:
    """What is wrong with a file torch could not load, in words (never torch's unsafe advice)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a pickled Python object ({found.group(1)}), which could run code when loaded"
    if "central directory" in text or "zip archive" in text or isinstance(err, (EOFError, zipfile.BadZipFile)):
        return "it is truncated or corrupt (its zip archive is damaged)"
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text:
        return "it is not a torch.save file, or it holds Python objects other than tensors and plain containers"
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(..., weights_only=True)`` with one line that names the file, what is wrong and the fix.

    torch's own message for a refused file advises reloading with ``weights_only=False``;
    that can run code from the file, so it is never passed on.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. Check the path (it must be a file).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with code objects, not a torch file...
        raise ValueError(
            f"cannot read {what} {path}: {_load_problem(err)}. Expected a complete file written by torch.save "
            "holding only tensors and plain containers; re-download it or re-save it from a trusted source."
        ) from None


CONVERT_COMMAND = ("python -c \"import torch; torch.save(torch.jit.load('{path}', map_location='cpu').state_dict(), "
                   "'{path}.state_dict.pt')\"")


class _ScriptObject:
    """Stand-in for a TorchScript class in a ``data.pkl``: keeps the pickled state, runs none of its code."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}


_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
                   ("collections", "OrderedDict"): collections.OrderedDict,
                   # list attributes of scripted modules: each returns its argument unchanged
                   **{("torch.jit._pickle", n): getattr(jit_pickle, n)
                      for n in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")}}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickler of a TorchScript ``data.pkl`` that allows only tensor rebuilding (Python docs,
    "Restricting Globals"). TorchScript classes (``__torch__.*``) become inert :class:`_ScriptObject`s:
    their ``__setstate__`` and methods, compiled code in the archive, are never run."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return _ScriptObject
        if (module, name) in _TENSOR_GLOBALS:
            return _TENSOR_GLOBALS[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]  # a dtype: persistent_load reads the storage, nothing is called
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only tensors are read from TorchScript archives")

    def persistent_load(self, pid: Any) -> Any:
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        if untyped.nbytes() != numel * torch.empty((), dtype=dtype).element_size():
            raise pickle.UnpicklingError(f"storage {key} has {untyped.nbytes()} bytes, expected {numel} elements")
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a ``torch.jit.save`` file (a zip with ``<name>/code/`` and ``<name>/constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") for n in archive.namelist())


def _named_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted.name, tensor)`` for every tensor attribute of a module tree read from ``data.pkl``."""
    state = obj.state if isinstance(obj, _ScriptObject) else None
    if not isinstance(state, dict):
        return
    for key, value in state.items():
        if torch.is_tensor(value):
            yield prefix + key, value
        elif isinstance(value, _ScriptObject):
            yield from _named_tensors(value, f"{prefix}{key}.")


def load_torchscript_tensors(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive (e.g. OpenAI's CLIP ``.pt``), without running its code.

    ``torch.jit.load`` would compile and run the archive's code (a module's
    ``__setstate__`` runs on load). Here only ``<name>/data.pkl`` is unpickled, with
    an unpickler that may rebuild tensors and nothing else, and the storages are
    read from ``<name>/data/<key>``. Keys are the dotted attribute paths, as
    ``torch.jit.load(path).state_dict()`` names them.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise pickle.UnpicklingError(f"{len(pickles)} data.pkl records, expected one")
            prefix = pickles[0].split("/")[0]
            root = _TorchScriptUnpickler(archive.read(pickles[0]), archive, prefix).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError, EOFError, TypeError, OSError) as err:
        raise ValueError(f"cannot read {what} {path} as a TorchScript archive: {err}. Re-download the file.") from None
    tensors = dict(_named_tensors(root))
    if not tensors:
        raise ValueError(f"{what} {path} is a TorchScript archive without readable tensors (its modules keep "
                         "their state in custom code, which is never run here). If you trust the file, convert it once: "
                         f"{CONVERT_COMMAND.format(path=path)}")
    return tensors
