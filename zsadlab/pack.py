"""Course packs: the series' trained runs, handed out as one verified plain tar file.

``zsadlab course pack build OUT.tar [--plan FILE]`` writes, as a plain (uncompressed) tar:

* ``runs/<method>-<key>/...`` - the plan's run-cache folders (checkpoints, resume state, ``run.json``);
* ``reference/<notebook>/...`` - the result tables (``*.csv``, ``*.json``) and figures (``*.png``) of a
  reference execution of the series (``make notebooks`` after ``zsadlab course train``);
* ``ledger.json`` - zsadlab version and commit, package versions, device, profile, seeds and wall time
  per run;
* ``MANIFEST.sha256`` - ``<sha256>  <path>`` for every other file (``sha256sum -c`` reads it).

``zsadlab course pack pull FILE|URL`` reads the whole pack into a staging folder inside the run cache,
checks that every member is a regular file under one of those names (no links, no absolute paths,
no ``..``), that the manifest lists exactly the files present and that every hash matches - and only
then moves the run folders into the cache (``os.replace``, same file system) and the reference
tables to ``<cache>/course-pack/``. A truncated, tampered or foreign file is refused with one line and
nothing is installed; a run folder already in the cache is kept as it is, so pulling twice is a no-op.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Sequence

from .errors import UserError
from .utils import atomic_path, write_json_atomic

FORMAT = "zsadlab-course-pack"
FORMAT_VERSION = 1
MANIFEST = "MANIFEST.sha256"
LEDGER = "ledger.json"
PACK_DIR = "course-pack"  # inside the run cache: the installed pack's ledger and reference tables
REFERENCE_SUFFIXES = (".csv", ".json", ".png")
PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "scipy", "scikit-learn", "scikit-image")
WALL_TIME_FILE = "wall_time.json"  # written into a run folder by `course train` when it trained the run
CHUNK = 1 << 20


class PackError(UserError):
    """A pack that cannot be built or installed; the message names the file and the fix."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def ledger(runs: Sequence[dict], cache: Path, profile: str) -> dict:
    """What the pack is and how it was made (see the module docstring)."""
    from . import __version__

    entries = []
    for run in runs:
        folder = cache / f"{run['method']}-{run['key']}"
        wall = folder / WALL_TIME_FILE
        entries.append({"key": run["key"], "method": run["method"], "seed": run["seed"], "epochs": run["epochs"],
                        "requested_by": run.get("requested_by", []),
                        "wall_seconds": json.loads(wall.read_text())["seconds"] if wall.is_file() else None})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "zsadlab": __version__, "commit": _commit(),
            "packages": _versions(), "python": platform.python_version(), "device": _device(), "profile": profile,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": entries}


def build(out: str | Path, runs: Sequence[dict], cache: str | Path, reference: str | Path | None,
          profile: str) -> dict:
    """Write the course pack of planned ``runs`` (their run-cache folders in ``cache``) and the reference
    execution's tables and figures (``reference/<notebook>/``) to ``out``; returns its ledger."""
    out, cache = Path(out), Path(cache)
    missing = [f"{r['method']}-{r['key']}" for r in runs
               if not r.get("key") or not (cache / f"{r['method']}-{r['key']}" / "run.json").is_file()]
    if missing:
        raise PackError(f"{len(missing)} run(s) of the plan are not in the run cache {cache} (e.g. {missing[0]}); "
                        "run `zsadlab course train --plan FILE` first")
    files: dict[str, Path] = {}
    for run in runs:
        folder = cache / f"{run['method']}-{run['key']}"
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != WALL_TIME_FILE:
                files[f"runs/{folder.name}/{path.relative_to(folder).as_posix()}"] = path
    if reference is not None and Path(reference).is_dir():
        for path in sorted(Path(reference).glob("*/*")):
            if path.is_file() and path.suffix in REFERENCE_SUFFIXES:
                files[f"reference/{path.parent.name}/{path.name}"] = path
    record = ledger(runs, cache, profile)
    with tempfile.TemporaryDirectory() as tmp:
        ledger_file = write_json_atomic(record, Path(tmp) / LEDGER)
        files[LEDGER] = Path(ledger_file)
        manifest = Path(tmp) / MANIFEST
        manifest.write_text("".join(f"{sha256_file(path)}  {name}\n" for name, path in sorted(files.items())),
                            encoding="utf-8")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as target, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(manifest, MANIFEST, recursive=False, filter=_plain)
            for name, path in sorted(files.items()):
                tar.add(path, name, recursive=False, filter=_plain)
    return record


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A member without its owner's names and ids (a pack carries no account details)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


# --- pull --------------------------------------------------------------------------------------------------
def _fetch(source: str, folder: Path) -> Path:
    """``source`` as a local file: a path as is, a URL downloaded into ``folder``."""
    if "://" not in source:
        path = Path(source)
        if not path.is_file():
            raise PackError(f"{source}: no such file; give the path or URL of a course pack (.tar)")
        return path
    target = folder / "download.tar"
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(target, "wb") as f:
            shutil.copyfileobj(response, f, CHUNK)
    except OSError as err:
        raise PackError(f"{source}: download failed ({err}); check the address or download it and pull the file")
    return target


def _member_name(info: tarfile.TarInfo, source: str) -> str:
    """``info``'s name if it may be extracted: a regular file at a relative path inside the pack's folders."""
    name = PurePosixPath(info.name)
    if not info.isfile():
        raise PackError(f"{source}: refused: member {info.name!r} is not a regular file (links, devices and "
                        "folders have no place in a course pack)")
    if name.is_absolute() or ".." in name.parts or not name.parts:
        raise PackError(f"{source}: refused: member {info.name!r} points outside the pack")
    if str(name) not in (MANIFEST, LEDGER) and name.parts[0] not in ("runs", "reference"):
        raise PackError(f"{source}: refused: member {info.name!r} is not part of a zsadlab course pack")
    return str(name)


def _extract_verified(tar_path: Path, staging: Path, source: str) -> dict:
    """Extract the pack into ``staging`` and check it completely; returns its ledger."""
    hashes: dict[str, str] = {}
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                name = _member_name(info, source)
                if name in hashes:
                    raise PackError(f"{source}: refused: member {name!r} appears twice")
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with tar.extractfile(info) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        digest.update(chunk)
                        dst.write(chunk)
                if target.stat().st_size != info.size:
                    raise PackError(f"{source}: refused: {name} is truncated")
                hashes[name] = digest.hexdigest()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise PackError(f"{source}: refused: not a complete tar file ({type(err).__name__}: {err}); download it again")
    if MANIFEST not in hashes or LEDGER not in hashes:
        raise PackError(f"{source}: refused: not a zsadlab course pack (no {MANIFEST} or {LEDGER})")
    listed = {}
    for line in (staging / MANIFEST).read_text(encoding="utf-8", errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    present = {name: digest for name, digest in hashes.items() if name != MANIFEST}
    if set(listed) != set(present):
        odd = sorted(set(listed) ^ set(present))[0]
        raise PackError(f"{source}: refused: {odd} is {'missing' if odd in listed else 'not in the manifest'}; "
                        "the pack is incomplete or was altered - download it again")
    bad = [name for name, digest in present.items() if listed[name] != digest]
    if bad:
        raise PackError(f"{source}: refused: {bad[0]} does not match its sha256 in {MANIFEST}; the pack was "
                        "altered or damaged - download it again")
    try:
        record = json.loads((staging / LEDGER).read_text(encoding="utf-8"))
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise PackError(f"{source}: refused: its {LEDGER} is not a zsadlab course pack's")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise PackError(f"{source}: refused: pack format {record['format_version']} is newer than this zsadlab "
                        f"reads ({FORMAT_VERSION}); update zsadlab")
    return record


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != WALL_TIME_FILE)
    return files_a == files_b and all(sha256_file(a / f) == sha256_file(b / f) for f in files_a)


def pull(source: str, cache: str | Path) -> dict:
    """Verify the course pack at ``source`` (file or URL) and install it into the run cache ``cache``;
    returns ``{"installed": [...], "present": [...], "ledger": {...}}``."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pack-staging-", dir=cache))
    try:
        tar_path = _fetch(source, staging)
        unpacked = staging / "pack"
        record = _extract_verified(tar_path, unpacked, source)
        installed, present = [], []
        runs = sorted((unpacked / "runs").iterdir()) if (unpacked / "runs").is_dir() else []
        for folder in runs:
            target = cache / folder.name
            if target.exists():
                present.append(folder.name)  # a run already here (pulled before, or trained here) is kept as is
            else:
                os.replace(folder, target)
                installed.append(folder.name)
        pack_dir = cache / PACK_DIR
        new = staging / PACK_DIR
        new.mkdir()
        for name in (LEDGER, MANIFEST, "reference"):
            if (unpacked / name).exists():
                os.replace(unpacked / name, new / name)
        if not (pack_dir.is_dir() and _same_tree(new, pack_dir)):
            old = staging / "old"
            if pack_dir.exists():
                os.replace(pack_dir, old)  # the previous pack's tables: written by this package
            os.replace(new, pack_dir)
        return {"installed": installed, "present": present, "ledger": record}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def installed_reference(cache: str | Path, notebook: str, table: str) -> Path | None:
    """The installed pack's reference table ``table`` of ``notebook`` (None without a pack or that table)."""
    path = Path(cache) / PACK_DIR / "reference" / notebook / table
    return path if path.is_file() else None
