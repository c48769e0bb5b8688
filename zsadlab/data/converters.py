"""Converters from each dataset's raw download to the common layout.

A converter is ``convert(raw: Path, out: LayoutWriter) -> None``: it reads the raw
folder as the dataset's authors ship it and tells the writer which images are
normal, which are anomalous and where their masks are. Several datasets share a
converter, configured with ``functools.partial`` in the registry.

Datasets without an official train/test split put every image in ``test`` (as
the official AnomalyCLIP ``generate_dataset_json`` scripts do for medical sets).
"""
from __future__ import annotations

import csv
from pathlib import Path

from .errors import DatasetError
from .images import image_files, load_mask
from .layout import NORMAL, SPLITS
from .writer import LayoutWriter

# ---------------------------------------------------------------- shared helpers


def require_dir(raw: Path, relative: str) -> Path:
    """``raw/relative`` if it is a folder, else :class:`DatasetError` (unknown layout)."""
    folder = raw / relative
    if not folder.is_dir():
        raise DatasetError(f"unknown layout: expected the folder {folder} in the raw dataset {raw}.")
    return folder


def require_file(raw: Path, relative: str) -> Path:
    """``raw/relative`` if it is a file, else :class:`DatasetError` (unknown layout)."""
    path = raw / relative
    if not path.is_file():
        raise DatasetError(f"unknown layout: expected the file {path} in the raw dataset {raw}.")
    return path


def images_by_stem(folder: Path, suffix: str = "") -> dict[str, Path]:
    """Image files of ``folder`` keyed by stem, with ``suffix`` (e.g. ``"_label"``) removed."""
    return {p.stem[: len(p.stem) - len(suffix)]: p for p in image_files(folder) if p.stem.endswith(suffix)}


def mask_of(image: Path, masks: dict[str, Path]) -> Path:
    """The mask of an anomalous ``image`` looked up by stem; :class:`DatasetError` if it has none."""
    try:
        return masks[image.stem]
    except KeyError:
        raise DatasetError(
            f"anomalous image {image} has no mask (looked for a file named {image.stem}.* among the masks): "
            "restore the mask or delete the image from the raw folder."
        ) from None


def csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, keys and values stripped of spaces."""
    with path.open(newline="", encoding="utf-8") as f:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def is_empty_mask(path: Path) -> bool:
    """True when the mask at ``path`` has no anomalous pixel."""
    return not load_mask(path).any()


# ---------------------------------------------------------------- MVTec-like sets


def mvtec_like(raw: Path, out: LayoutWriter) -> None:
    """MVTec AD layout (also MPDD, DTD-Synthetic, ISIC and any already-converted set).

    ``raw/<class>/{train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png}``;
    masks may also be named ``<name>.png``. A raw folder that is itself one class
    (holds ``test/``) becomes a single class named after the folder. Classes without
    ``ground_truth/`` are image-level only.
    """
    class_dirs = [raw] if (raw / "test").is_dir() else [d for d in sorted(raw.iterdir()) if (d / "test").is_dir()]
    if not class_dirs:
        raise DatasetError(f"unknown layout: no <class>/test/ folder in {raw}.")
    for class_dir in class_dirs:
        class_name = class_dir.name.lower()
        for split in SPLITS:
            for image in image_files(class_dir / split / NORMAL):
                out.normal(image, class_name, image.name, split)
        gt = class_dir / "ground_truth"
        defects = [d for d in sorted((class_dir / "test").iterdir()) if d.is_dir() and d.name != NORMAL]
        for defect_dir in defects:
            masks = {**images_by_stem(gt / defect_dir.name), **images_by_stem(gt / defect_dir.name, "_mask")}
            for image in image_files(defect_dir):
                mask = mask_of(image, masks) if gt.is_dir() else None
                out.anomalous(image, class_name, defect_dir.name, image.name, mask)


def visa(raw: Path, out: LayoutWriter) -> None:
    """VisA: ``<cls>/Data/{Images,Masks}/{Normal,Anomaly}`` with the official 1-class split.

    ``split_csv/1cls.csv`` has columns ``object,split,label,image,mask`` (label
    ``normal``/``anomaly``, paths relative to ``raw``), as read by the official
    spot-diff ``prepare_data.py`` and AnomalyCLIP's ``visa.py``. VisA has no defect
    types: anomalous images go to ``test/anomaly``.
    """
    for row in csv_rows(require_file(raw, "split_csv/1cls.csv")):
        image = raw / row["image"]
        if row["label"] == "normal":
            out.normal(image, row["object"], image.name, row["split"])
        else:
            out.anomalous(image, row["object"], "anomaly", image.name, raw / row["mask"])


def btad(raw: Path, out: LayoutWriter) -> None:
    """BTAD: ``01..03/{train/ok, test/ok, test/ko, ground_truth/ko}``, masks share the image's stem."""
    products = [d for d in sorted(raw.iterdir()) if (d / "test" / "ko").is_dir()] if raw.is_dir() else []
    if not products:
        raise DatasetError(f"unknown layout: no <product>/test/ko/ folder in {raw}.")
    for product in products:
        for split in SPLITS:
            for image in image_files(product / split / "ok"):
                out.normal(image, product.name, image.name, split)
        masks = images_by_stem(require_dir(product, "ground_truth/ko"))
        for image in image_files(product / "test" / "ko"):
            out.anomalous(image, product.name, "defect", image.name, mask_of(image, masks))


def kolektor_sdd(raw: Path, out: LayoutWriter) -> None:
    """KolektorSDD (SDD): ``kosNN/PartK.jpg`` with ``PartK_label.bmp``; an empty label means normal.

    Every image goes to ``test`` of the class ``electrical_commutators``, named ``kosNN_PartK``.
    """
    parts = [d for d in sorted(raw.iterdir()) if d.is_dir() and d.name.startswith("kos")] if raw.is_dir() else []
    if not parts:
        raise DatasetError(f"unknown layout: no kosNN/ folders in {raw}.")
    for part in parts:
        labels = images_by_stem(part, "_label")
        for image in image_files(part):
            if image.stem.endswith("_label"):
                continue
            label = mask_of(image, labels)
            name = f"{part.name}_{image.name}"
            if is_empty_mask(label):
                out.normal(image, "electrical_commutators", name)
            else:
                out.anomalous(image, "electrical_commutators", "defect", name, label)


def dagm(raw: Path, out: LayoutWriter) -> None:
    """DAGM 2007: ``ClassN/{Train,Test}/*.PNG`` with defect masks in ``{Train,Test}/Label/<stem>_label.PNG``.

    Normal training images go to ``train/good``; normal test images to ``test/good``;
    every defective image (of either split, prefixed with it) to ``test/defect``.
    """
    classes = [d for d in sorted(raw.iterdir()) if (d / "Train").is_dir()] if raw.is_dir() else []
    if not classes:
        raise DatasetError(f"unknown layout: no Class<N>/Train/ folders in {raw}.")
    for class_dir in classes:
        class_name = class_dir.name.lower()
        for split in ("Train", "Test"):
            labels = images_by_stem(class_dir / split / "Label", "_label")
            for image in image_files(class_dir / split):
                if image.stem in labels:
                    name = f"{split.lower()}_{image.name}"
                    out.anomalous(image, class_name, "defect", name, labels[image.stem])
                else:
                    out.normal(image, class_name, image.name, split.lower())


# ---------------------------------------------------------------- segmentation-only sets


def all_anomalous(raw: Path, out: LayoutWriter, images: str, masks: str, class_name: str, defect: str) -> None:
    """Sets where every image shows a lesion (polyps, thyroid nodules): ``raw/<images>/`` + ``raw/<masks>/``.

    Masks share their image's stem. Such sets give pixel-level metrics only
    (the official TN3K / polyp readers mark every image anomalous).
    """
    mask_files = images_by_stem(require_dir(raw, masks))
    for image in image_files(require_dir(raw, images)):
        out.anomalous(image, class_name, defect, image.name, mask_of(image, mask_files))


# ---------------------------------------------------------------- image-level sets


def normal_and_anomalous_folders(
    raw: Path, out: LayoutWriter, normal: str, anomalous: str, class_name: str, defect: str
) -> None:
    """Image-level sets with one folder per label (BrainMRI, Br35H, COVID-19): all go to ``test``.

    Images may sit directly in each folder or in an ``images/`` subfolder
    (COVID-19 Radiography Database style).
    """
    for folder, is_anomalous in ((normal, False), (anomalous, True)):
        base = require_dir(raw, folder)
        for image in image_files(base) or image_files(base / "images"):
            if is_anomalous:
                out.anomalous(image, class_name, defect, image.name)
            else:
                out.normal(image, class_name, image.name)


def headct(raw: Path, out: LayoutWriter) -> None:
    """HeadCT (Kaggle): ``head_ct/NNN.png`` and ``labels.csv`` with columns ``id, hemorrhage`` (0/1)."""
    folder = require_dir(raw, "head_ct")
    for row in csv_rows(require_file(raw, "labels.csv")):
        image = folder / f"{int(row['id']):03d}.png"
        if int(row["hemorrhage"]):
            out.anomalous(image, "head", "hemorrhage", image.name)
        else:
            out.normal(image, "head", image.name)


def elpv(raw: Path, out: LayoutWriter) -> None:
    """ELPV (PyPI ``elpv-dataset``): ``images/*.png`` and ``labels.csv``.

    Each line of ``labels.csv`` is ``images/cellNNNN.png <defect probability> <mono|poly>``
    (whitespace separated). Probability 0 is normal, anything above is defective;
    the cell type is the class.
    """
    for line in require_file(raw, "labels.csv").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        relative, probability, cell_type = line.split()
        image = raw / relative
        if float(probability) > 0:
            out.anomalous(image, cell_type, "defect", image.name)
        else:
            out.normal(image, cell_type, image.name)


# ---------------------------------------------------------------- the two real archives shipped offline


def magnetic_tile(raw: Path, out: LayoutWriter) -> None:
    """Magnetic Tile Defects (Huang et al. 2018): ``MT_<Type>/Imgs/<id>.jpg`` with mask ``<id>.png``.

    ``MT_Free`` is normal; the other five types are defects (lower-cased names).
    There is no official split: everything goes to ``test`` of class ``magnetic_tile``.
    """
    types = [d for d in sorted(raw.glob("MT_*")) if (d / "Imgs").is_dir()]
    if not types:
        raise DatasetError(f"unknown layout: no MT_<Type>/Imgs/ folders in {raw}.")
    for type_dir in types:
        folder = type_dir / "Imgs"
        masks = {p.stem: p for p in folder.glob("*.png")}
        defect = type_dir.name[len("MT_"):].lower()
        for image in sorted(folder.glob("*.jpg")):
            if defect == "free":
                out.normal(image, "magnetic_tile", image.name)
            else:
                out.anomalous(image, "magnetic_tile", defect, image.name, mask_of(image, masks))


def mpdd_metal_plate(raw: Path, out: LayoutWriter) -> None:
    """MPDD ``metal_plate`` re-split: ``metal_plate/{train,val,test}/{images,masks}/<split>_NNNNN.png``.

    An image whose mask is empty is normal. Normal images of ``train`` and ``val`` go
    to ``train/good``, those of ``test`` to ``test/good``; every defective image goes
    to ``test/defective`` (the re-split has no defect types).
    """
    base = require_dir(raw, "metal_plate")
    for split in ("train", "val", "test"):
        masks = images_by_stem(require_dir(base, f"{split}/masks"))
        for image in image_files(require_dir(base, f"{split}/images")):
            mask = mask_of(image, masks)
            if is_empty_mask(mask):
                out.normal(image, "metal_plate", image.name, "test" if split == "test" else "train")
            else:
                out.anomalous(image, "metal_plate", "defective", image.name, mask)

