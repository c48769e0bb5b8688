"""Turning a dataset name into a prepared root: ``prepare``, ``ensure_dataset``, ``fetch_raw``.

Every prepared root is built atomically (see :mod:`zsadlab.data.files`), gets
an AnomalyCLIP ``meta.json`` describing it and the marker file ``MARKER``. Only a
folder holding that marker may be replaced (``overwrite=True`` / ``--force``), and
never one that contains the raw folder: nothing the user owns is ever deleted.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..utils import write_json_atomic
from .download import download, extract
from .errors import DatasetError
from .files import atomic_dir
from .layout import META_FILE, layout_classes, meta_of
from .registry import DatasetEntry, entry, how_to_get, names
from .writer import LayoutWriter

MARKER = ".zsadlab-prepared"  # written into every root prepare() builds; only such roots may be replaced
MARKER_PREFIX = "prepared by zsadlab: "  # the marker's text, followed by the registry name


def prepare(name: str, raw: str | Path | None = None, out: str | Path | None = None, seed: int = 0,
            overwrite: bool = False) -> Path:
    """Build the common-layout root ``out`` (default ``data/<name>``) for dataset ``name``; return it.

    Real datasets are converted from the raw folder ``raw``; synthetic ones are
    generated from ``seed`` (``raw`` is ignored). Nothing appears at ``out`` unless
    the whole conversion succeeded. ``overwrite`` replaces only a folder this
    function wrote (see :func:`check_replaceable`).
    """
    item = entry(name)
    out = Path(out) if out is not None else Path("data") / name
    if not item.synthetic:
        raw = _checked_raw(item, raw)
    check_replaceable(out, raw if not item.synthetic else None, overwrite)
    with atomic_dir(out, overwrite) as tmp:
        writer = LayoutWriter(tmp, masks=item.masks)
        try:
            if item.synthetic:
                item.generate(writer, seed)
            else:
                item.convert(raw, writer)
        except DatasetError as err:
            raise DatasetError(f"{err}\n{item.title}: expected raw layout: {item.raw_layout}") from None
        if writer.skipped:
            warnings.warn(
                f"{len(writer.skipped)} unreadable raw images were skipped:\n  " + "\n  ".join(writer.skipped),
                stacklevel=2,
            )
        if writer.count == 0:
            raise DatasetError(f"no images found in {raw}. {item.title}: expected raw layout: {item.raw_layout}")
        write_json_atomic(meta_of(tmp), tmp / META_FILE)
        (tmp / MARKER).write_text(f"{MARKER_PREFIX}{name}\n", encoding="utf-8")
    return out


def check_replaceable(out: Path, raw: Path | None, overwrite: bool) -> None:
    """Raise :class:`DatasetError` unless writing ``out`` can delete nothing the user owns.

    ``out`` may not be ``raw`` or a folder above it. An existing ``out`` is replaced
    only with ``overwrite`` and only when it holds ``MARKER`` (a root prepared here)
    or is an empty folder.
    """
    if raw is not None and (raw.resolve() == out.resolve() or out.resolve() in raw.resolve().parents):
        raise DatasetError(
            f"--out {out} contains the raw folder {raw}: preparing there would delete the raw data. "
            "Choose an --out outside the raw folder, e.g. data/<name>."
        )
    if not out.exists() and not out.is_symlink():
        return
    replaceable = out.is_dir() and ((out / MARKER).is_file() or not any(out.iterdir()))
    if not overwrite and replaceable:
        raise DatasetError(f"{out} already exists: pass --force to replace it, or choose another --out folder.")
    if not replaceable:
        raise DatasetError(
            f"{out} exists and is not a dataset zsadlab prepared (no {MARKER} file in it), so it is never replaced "
            "(not even with --force). Choose another --out, or move that folder away yourself."
        )


def _checked_raw(item: DatasetEntry, raw: str | Path | None) -> Path:
    """``raw`` as an absolute Path if it is an existing folder (so ``.`` and ``..`` name their folder,
    from which a one-class raw folder takes its class name); else a :class:`DatasetError` saying how to get it."""
    if raw is None or not Path(raw).is_dir():
        raise DatasetError(f"raw folder {raw} of {item.title} does not exist. {how_to_get(item)}")
    return Path(raw).resolve()


def dataset_name(root: str | Path) -> str | None:
    """The registry name of the dataset at ``root``, or None when it cannot be told.

    The name :func:`prepare` wrote into the root's ``MARKER``; for a root without one (e.g. a folder
    the official scripts prepared), the folder's own name when that is a registered name (``.../mvtec``).
    """
    root = Path(root)
    marker = root / MARKER
    text = marker.read_text(encoding="utf-8").strip() if marker.is_file() else ""
    name = text[len(MARKER_PREFIX):] if text.startswith(MARKER_PREFIX) else root.name
    return name if name in names() else None


def is_prepared(root: str | Path) -> bool:
    """True when ``root`` holds a ``meta.json`` or common-layout class folders."""
    root = Path(root)
    return (root / META_FILE).is_file() or bool(layout_classes(root))


def ensure_dataset(name: str, data_root: str | Path = "data", seed: int = 0) -> Path:
    """The prepared root ``<data_root>/<name>``: generated on demand for synthetic sets.

    A missing real dataset raises :class:`DatasetError` with the commands that
    prepare it. An existing root is returned as is (whatever seed made it). A
    folder at ``root`` that is not a prepared dataset is never deleted: only one
    holding ``MARKER`` (an earlier, incomplete generation) is regenerated.
    """
    root = Path(data_root) / name
    if is_prepared(root):
        return root
    item = entry(name)
    if item.synthetic:
        if root.exists() and not (root / MARKER).is_file():
            raise DatasetError(
                f"{root} exists but is not a prepared {name} dataset; it was left untouched. Move it away, or "
                f"choose another data root (--data-root), then run again."
            )
        return prepare(name, out=root, seed=seed, overwrite=root.exists())
    raise DatasetError(
        f"dataset {name} is not prepared in {root}. {how_to_get(item)} Then run: "
        f"zsadlab data prepare {name} --raw RAW_DIR --out {root}"
    )


def single_child(folder: Path) -> Path:
    """``folder``'s only subfolder when it holds nothing else (a wrapper folder inside an archive), else ``folder``."""
    children = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return children[0] if len(children) == 1 and children[0].is_dir() else folder


def fetch_raw(name: str, downloads: str | Path = "data/raw", progress: bool = True) -> Path:
    """Download and extract the raw archive of ``name`` under ``downloads``; return the raw folder.

    Raises :class:`DatasetError` with manual steps when no direct URL exists.
    """
    item = entry(name)
    if item.url is None:
        raise DatasetError(how_to_get(item))
    downloads = Path(downloads)
    archive = download(item.url, downloads / item.archive, item.sha256, progress=progress)
    target = downloads / name
    if not target.exists():
        extract(archive, target)
    return single_child(target)
