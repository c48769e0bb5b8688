"""Downloading and safely extracting dataset archives.

``download``: streams a URL to ``<dest>.part`` with a tqdm bar, resumes an
interrupted download with an HTTP ``Range`` request, verifies the sha256 and only
then renames the file to ``dest``. ``extract``: unpacks a tar (any compression) or
zip archive into a temporary folder beside the target and renames it into place;
members with absolute paths, ``..`` components or links leading out, and device
files, are refused before anything is written.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from tqdm.auto import tqdm

from .errors import DatasetError
from .files import atomic_dir

CHUNK = 1 << 20  # bytes read per iteration


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None = None, progress: bool = True, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify ``sha256``, return ``dest``.

    An existing ``dest`` with the right checksum is returned at once. An interrupted
    transfer keeps its ``.part`` file and raises :class:`DatasetError`: running the
    same call again continues where it stopped. A checksum mismatch deletes the
    ``.part`` file (it cannot be resumed into a correct file).
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_into(url, part, progress, timeout)
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise DatasetError(
            f"sha256 of the download from {url} is {digest}, expected {sha256}: the file is corrupt or has "
            "changed upstream. The partial file was deleted; run the command again, or report the new checksum."
        )
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the missing bytes of ``url`` to ``part`` (HTTP Range when ``part`` already has some)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if offset and response.status != 206:  # the server ignored Range: start again
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=part.name, disable=not progress
            ) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # Range not satisfiable: the .part file is already complete
            return
        raise DatasetError(f"download of {url} failed: HTTP {err.code} {err.reason}. Check the URL.") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        have = part.stat().st_size if part.exists() else 0
        raise DatasetError(
            f"download of {url} was interrupted after {have} bytes ({type(err).__name__}: {err}); "
            f"{part} was kept: run the same command again to resume."
        ) from None
    if total is not None and part.stat().st_size < total:
        raise DatasetError(
            f"download of {url} stopped at {part.stat().st_size} of {total} bytes; {part} was kept: "
            "run the same command again to resume."
        )


def _escapes(parts: tuple[str, ...]) -> bool:
    """True when a relative path made of ``parts`` climbs above its starting folder at some point."""
    depth = 0
    for part in parts:
        depth += {"..": -1, ".": 0}.get(part, 1)
        if depth < 0:
            return True
    return False


def _unsafe(name: str, link: str | None = None, link_from_root: bool = False) -> str | None:
    """Why an archive member ``name`` may not be extracted, or None.

    ``link`` is the target of a symbolic link (relative to the member's folder) or,
    with ``link_from_root``, of a tar hard link (relative to the archive root).
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        return "absolute path"
    if _escapes(path.parts):
        return "path leads outside the target folder"
    if link is not None:
        target = PurePosixPath(link.replace("\\", "/"))
        start = () if link_from_root else path.parent.parts
        if target.is_absolute() or _escapes(start + target.parts):
            return f"link to {link} leads outside the target folder"
    return None


def _checked_tar_members(tar: tarfile.TarFile, archive: Path, keep: Callable[[str], bool]) -> list[tarfile.TarInfo]:
    """Members of ``tar`` to extract; :class:`DatasetError` on the first unsafe one."""
    members = []
    for member in tar.getmembers():
        if not keep(member.name):
            continue
        link = member.linkname if (member.issym() or member.islnk()) else None
        reason = _unsafe(member.name, link, link_from_root=member.islnk()) or (None if member.isfile() or member.isdir() or link else "device file")
        if reason:
            raise DatasetError(f"refusing to extract {archive}: member {member.name!r}: {reason}. The archive is unsafe.")
        members.append(member)
    return members


def _checked_zip_members(zf: zipfile.ZipFile, archive: Path, keep: Callable[[str], bool]) -> list[str]:
    """Member names of ``zf`` to extract; :class:`DatasetError` on the first unsafe one."""
    names = [n for n in zf.namelist() if keep(n)]
    for name in names:
        reason = _unsafe(name)
        if reason:
            raise DatasetError(f"refusing to extract {archive}: member {name!r}: {reason}. The archive is unsafe.")
    return names


def extract(archive: str | Path, target: str | Path, keep: Callable[[str], bool] = lambda name: True,
            overwrite: bool = False) -> Path:
    """Extract the members of ``archive`` accepted by ``keep`` into ``target`` atomically; return ``target``.

    Refuses (before writing anything) absolute paths, ``..`` components, links
    that point outside ``target`` and device files. The folder appears under its
    final name only once extraction has finished.
    """
    archive, target = Path(archive), Path(target)
    with atomic_dir(target, overwrite) as tmp:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp, members=_checked_zip_members(zf, archive, keep))
        else:
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, members=_checked_tar_members(tar, archive, keep), filter="data")
            except (tarfile.TarError, EOFError, OSError) as err:
                raise DatasetError(f"cannot extract {archive} ({err}): the archive is truncated or not a "
                                   "tar/zip file; delete it and download again.") from None
    return target
