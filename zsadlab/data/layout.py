"""The common on-disk layout (MVTec AD's) and AnomalyCLIP's ``meta.json``.

Layout of a prepared dataset root::

    <root>/<class>/train/good/<name>.png
    <root>/<class>/test/good/<name>.png
    <root>/<class>/test/<defect>/<name>.png
    <root>/<class>/ground_truth/<defect>/<name>_mask.png     (0/255; no folder => image-level only)
    <root>/meta.json                                          (optional, AnomalyCLIP's index)

``meta.json`` is the index the official AnomalyCLIP code reads
(``generate_dataset_json/*.py`` writes it)::

    {"train": {cls: [item, ...]}, "test": {cls: [item, ...]}}
    item = {"img_path": "bottle/test/crack/000.png",          # relative to root
            "mask_path": "bottle/ground_truth/crack/000_mask.png",   # "" for normal images
            "cls_name": "bottle", "specie_name": "crack", "anomaly": 1}

A folder with a ``meta.json`` is read through it (so existing official folders
work unchanged); otherwise the class folders are scanned.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError
from .images import image_files

SPLITS = ("train", "test")  # the folders on disk
INCTRL_TRAIN = "inctrl_train"  # a split to load: InCTRL's training pool (see :data:`POOLED_SPLITS`)
# Splits that are no folder but the union of on-disk splits, declared here (read by :func:`samples`):
# InCTRL's training pool (datasets/preprocess/gen_train_json.py) is every image of both splits.
POOLED_SPLITS: dict[str, tuple[str, ...]] = {INCTRL_TRAIN: SPLITS}
NORMAL = "good"
META_FILE = "meta.json"


@dataclass(frozen=True)
class Sample:
    """One image of a prepared dataset.

    ``label`` is 0 (normal) or 1 (anomalous). ``has_mask`` says whether pixel
    ground truth exists: the mask file for an anomalous image, an implicit
    all-zero mask for a normal image of a dataset with masks. Image-level-only
    datasets (HeadCT, BrainMRI...) have ``has_mask=False`` everywhere.
    """

    path: Path
    mask_path: Path | None
    label: int
    class_name: str
    defect: str
    has_mask: bool = False


def path_component(name: str, source: str | Path) -> str:
    """``name`` if it can be one file or folder name (class, defect, image): not empty, no ``/`` or ``\\``,
    not ``.`` or ``..``; else a :class:`DatasetError` naming ``source`` (the file that gave the name)."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DatasetError(f"{source}: the name {name!r} cannot be a file or folder name (empty, '.', '..' or with a "
                           "path separator) and would write outside the output folder. Rename it (a plain name "
                           "such as 'bottle').")
    return name


def mask_file(root: Path, class_name: str, defect: str, image_name: str) -> Path:
    """Where the common layout stores the mask of ``image_name``: ``ground_truth/<defect>/<stem>_mask.png``."""
    return root / class_name / "ground_truth" / defect / f"{Path(image_name).stem}_mask.png"


def _found_mask(root: Path, class_name: str, defect: str, image: Path) -> Path | None:
    """The mask of an anomalous image: ``<stem>_mask.png``, else ``<stem>.png`` (BTAD-style), else None."""
    canonical = mask_file(root, class_name, defect, image.name)
    plain = canonical.with_name(f"{image.stem}.png")
    return next((p for p in (canonical, plain) if p.is_file()), None)


def layout_classes(root: Path) -> list[str]:
    """Class folders of a common-layout root (those holding ``train/`` or ``test/``), sorted."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any((d / s).is_dir() for s in SPLITS))


def scanned_samples(root: Path, split: str) -> list[Sample]:
    """Samples of ``split`` found by walking the class folders of ``root``."""
    samples = []
    for class_name in layout_classes(root):
        class_has_masks = (root / class_name / "ground_truth").is_dir()
        split_dir = root / class_name / split
        defects = sorted(d.name for d in split_dir.iterdir() if d.is_dir()) if split_dir.is_dir() else []
        for defect in defects:
            label = int(defect != NORMAL)
            for image in image_files(split_dir / defect):
                mask = _found_mask(root, class_name, defect, image) if label and class_has_masks else None
                has_mask = class_has_masks and (label == 0 or mask is not None)
                samples.append(Sample(image, mask, label, class_name, defect, has_mask))
    return samples


def read_meta(root: Path) -> dict:
    """The parsed ``<root>/meta.json``; :class:`DatasetError` if it is not valid JSON of the official shape."""
    path = root / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"cannot read {path} ({err}). Delete it to scan the folders instead, or re-run prepare.") from None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(s, {}), dict) for s in SPLITS):
        raise DatasetError(f'{path} is not an AnomalyCLIP meta.json ({{"train": {{cls: [...]}}, "test": {{...}}}}).')
    return meta


def _classes_with_masks(root: Path, meta: dict) -> set[str]:
    """Classes in which an anomalous item names a mask file, or that have a ``<root>/<cls>/ground_truth/`` folder."""
    classes = {cls for split in SPLITS for cls in meta.get(split, {})}
    named = {
        item.get("cls_name")
        for split in SPLITS
        for items in meta.get(split, {}).values()
        for item in items
        if item.get("anomaly") and item.get("mask_path")
    }
    return named | {cls for cls in classes if (root / cls / "ground_truth").is_dir()}


def _inside(root: Path, relative: str) -> Path:
    """``root / relative`` if it stays inside ``root`` (lexically), else :class:`DatasetError`."""
    path = root / relative
    if not os.path.normpath(path).startswith(os.path.normpath(root) + os.sep):
        raise DatasetError(
            f"{root / META_FILE} lists {relative!r}, which is outside {root}: a meta.json may only name files in "
            "its own folder. Regenerate it with `zsadlab data prepare`, or delete it to scan the folders."
        )
    return path


def meta_samples(root: Path, meta: dict, split: str) -> list[Sample]:
    """Samples of ``split`` listed in an AnomalyCLIP ``meta.json`` (paths inside ``root``, resolved against it)."""
    masked = _classes_with_masks(root, meta)
    samples = []
    for class_name, items in sorted(meta.get(split, {}).items()):
        path_component(class_name, root / META_FILE)  # class names become result and prompt-set file names
        for item in items:
            try:
                label = int(item["anomaly"])
                image = _inside(root, item["img_path"])
                mask = _inside(root, item["mask_path"]) if label and item["mask_path"] else None
                has_mask = class_name in masked and (label == 0 or mask is not None)
                path_component(item["cls_name"], root / META_FILE)
                defect = path_component(item["specie_name"], root / META_FILE)
                samples.append(Sample(image, mask, label, class_name, defect, has_mask))
            except (KeyError, TypeError, ValueError) as err:
                raise DatasetError(
                    f"{root / META_FILE}: item {item!r} lacks {err}; items need img_path, mask_path, "
                    "cls_name, specie_name, anomaly. Re-run `zsadlab data prepare`."
                ) from None
    return samples


def samples(root: str | Path, split: str) -> list[Sample]:
    """Samples of ``split`` under ``root``, from ``meta.json`` when present, else from the folders.

    ``split`` is ``"train"``, ``"test"`` or a key of :data:`POOLED_SPLITS`, the union of its
    splits in order (``INCTRL_TRAIN``: the normals of ``train/good`` and ``test/good`` and the
    anomalies of the test defects). Raises :class:`DatasetError` for an unknown split or a
    folder in neither format.
    """
    root = Path(root)
    if split in POOLED_SPLITS:
        return [sample for part in POOLED_SPLITS[split] for sample in samples(root, part)]
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: use one of {SPLITS + tuple(POOLED_SPLITS)}.")
    if (root / META_FILE).is_file():
        return meta_samples(root, read_meta(root), split)
    if not layout_classes(root):
        raise DatasetError(
            f"{root} is not a prepared dataset: no meta.json and no <class>/train|test folders. "
            "Prepare it with `zsadlab data prepare NAME --raw RAW_DIR --out "
            f"{root}` (see `zsadlab data list`)."
        )
    return scanned_samples(root, split)


def meta_item(root: Path, sample: Sample) -> dict:
    """The official ``meta.json`` item of one sample (paths relative to ``root``, "" for no mask)."""
    return {
        "img_path": sample.path.relative_to(root).as_posix(),
        "mask_path": sample.mask_path.relative_to(root).as_posix() if sample.mask_path else "",
        "cls_name": sample.class_name,
        "specie_name": sample.defect,
        "anomaly": sample.label,
    }


def meta_of(root: str | Path) -> dict:
    """The ``meta.json`` content describing the common-layout folders under ``root``."""
    root = Path(root)
    meta: dict = {}
    for split in SPLITS:
        by_class: dict[str, list[dict]] = {}
        for sample in scanned_samples(root, split):
            by_class.setdefault(sample.class_name, []).append(meta_item(root, sample))
        meta[split] = by_class
    return meta
