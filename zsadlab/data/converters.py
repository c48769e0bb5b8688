"""Converters from each dataset's raw download to the common layout.

A converter is ``convert(raw: Path, out: LayoutWriter) -> None``: it reads the raw
folder as the dataset's authors ship it and tells the writer which images are
normal, which are anomalous and where their masks are. Several datasets share a
converter, configured with ``functools.partial`` in the registry.

Each converter reproduces an official script, named in its docstring (AnomalyCLIP
``generate_dataset_json/*.py``, InCTRL ``datasets/preprocess/convert_*.py``), including
the class names those scripts write (object-aware baselines and InCTRL's text prior
read them). Where the two protocols differ for one dataset, the registry has one
entry per protocol (``<name>`` and ``<name>_inctrl``); see ``PROTOCOL.md``.
Datasets without an official split either put every image in ``test`` (AnomalyCLIP's
medical scripts) or keep 25 % of the normal images for ``test`` (:func:`inctrl_holdout`).
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from .errors import DatasetError
from .images import image_files, load_mask, load_rgb
from .layout import NORMAL, SPLITS
from .writer import ImageSource, LayoutWriter

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
    """Rows of a CSV file with a header, keys and values stripped of spaces.

    Tolerates what spreadsheet programs write: a UTF-8 byte-order mark and a ``;``
    (or tab) separator instead of ``,``.
    """
    text = path.read_text(encoding="utf-8-sig")
    header = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count)
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def inctrl_holdout(normals: Sequence) -> tuple[list, list]:
    """(train, test) normals as InCTRL's converters split them: 25 % to test, ``random_state=42``.

    ``convert_HeadCT.py``, ``convert_BrainMRI.py``, ``convert_SDD.py`` and ``convert_elpv.py`` call
    ``sklearn.model_selection.train_test_split(normals, test_size=0.25, random_state=42)``;
    the result depends on the order of ``normals``, which the callers document.
    """
    if len(normals) < 2:  # too few to split (train_test_split would fail): keep them for testing
        return [], list(normals)
    train, test = train_test_split(list(normals), test_size=0.25, random_state=42)
    return list(train), list(test)


def subfolders(folder: Path) -> list[Path]:
    """Visible subfolders of ``folder``, sorted by name."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def is_empty_mask(path: Path) -> bool:
    """True when the mask at ``path`` has no anomalous pixel."""
    return not load_mask(path).any()


# ---------------------------------------------------------------- MVTec-like sets


def split_class_dirs(raw: Path) -> list[Path]:
    """Class folders of a raw tree already in the common layout: ``raw`` itself when it holds
    ``test/``, else its subfolders holding ``test/`` (``[]`` for any other layout)."""
    if not raw.is_dir():
        return []
    return [raw] if (raw / "test").is_dir() else [d for d in subfolders(raw) if (d / "test").is_dir()]


def mvtec_like(raw: Path, out: LayoutWriter, class_name: str | None = None) -> None:
    """MVTec AD layout (also MPDD, DTD-Synthetic and any already-converted set).

    ``raw/<class>/{train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png}``;
    masks may also be named ``<name>.png``. Class names are the folder names, as the
    official ``mvtec.py``, ``mpdd.py`` and ``DTD.py`` write them (``Woven_001``), or
    ``class_name`` for a one-class set. A raw folder that is itself one class (holds
    ``test/``) becomes a class named after the folder. Classes without ``ground_truth/``
    are image-level only.
    """
    class_dirs = split_class_dirs(raw)
    if not class_dirs:
        raise DatasetError(f"unknown layout: no <class>/test/ folder in {raw}.")
    for class_dir in class_dirs:
        name = class_name or class_dir.name
        for split in SPLITS:
            for image in image_files(class_dir / split / NORMAL):
                out.normal(image, name, image.name, split)
        gt = class_dir / "ground_truth"
        defects = [d for d in subfolders(class_dir / "test") if d.name != NORMAL]
        for defect_dir in defects:
            masks = {**images_by_stem(gt / defect_dir.name), **images_by_stem(gt / defect_dir.name, "_mask")}
            for image in image_files(defect_dir):
                mask = mask_of(image, masks) if gt.is_dir() else None
                out.anomalous(image, name, defect_dir.name, image.name, mask)


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


def kolektor_sdd(raw: Path, out: LayoutWriter, class_name: str) -> None:
    """KolektorSDD cut into thirds, as InCTRL ``datasets/preprocess/convert_SDD.py`` does.

    Raw: ``kosNN/PartK.jpg`` with ``kosNN/PartK_label.bmp``. Each image and its label are
    cut into three horizontal bands (rows ``[:H//3]``, ``[H//3:2H//3]``, ``[2H//3:]``),
    named ``kosNN_PartK_<i>.png``; a band whose label is empty is normal. The normal
    bands are split by :func:`inctrl_holdout` (in sorted folder/file order; the official
    script uses ``os.listdir`` order, which depends on the file system). AnomalyCLIP's
    ``SDD.py`` reads the ``test`` split of this output under the class name
    ``electrical commutators``; InCTRL names the class ``SDD``.
    """
    parts = [d for d in subfolders(raw) if d.name.startswith("kos")] if raw.is_dir() else []
    if not parts:
        raise DatasetError(f"unknown layout: no kosNN/ folders in {raw}.")
    normals: list[tuple[np.ndarray, str]] = []
    for part in parts:
        labels = images_by_stem(part, "_label")
        for image in image_files(part):
            if image.suffix.lower() != ".jpg":
                continue
            for i, (band, label) in enumerate(_thirds(image, mask_of(image, labels))):
                name = f"{part.name}_{image.stem}_{i}.png"
                if label.any():
                    out.anomalous(band, class_name, "defect", name, label)
                else:
                    normals.append((band, name))
    _write_holdout(out, normals, class_name)


def _thirds(image: Path, label: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three horizontal bands of an image [H, W, 3] and of its {0, 1} label [H, W] (convert_SDD.py)."""
    rgb, mask = load_rgb(image), load_mask(label)
    if rgb.shape[:2] != mask.shape:
        raise DatasetError(
            f"label {label} is {mask.shape[1]}x{mask.shape[0]} but {image} is {rgb.shape[1]}x{rgb.shape[0]}: "
            "the official converter refuses such a pair; restore the original files."
        )
    h = rgb.shape[0]
    cuts = [(0, h // 3), (h // 3, h * 2 // 3), (h * 2 // 3, h)]
    return [(rgb[a:b], mask[a:b]) for a, b in cuts]


def _write_holdout(out: LayoutWriter, normals: list[tuple[ImageSource, str]], class_name: str) -> None:
    """Write (image, name) normals: 75 % to ``train/good``, 25 % to ``test/good`` (:func:`inctrl_holdout`)."""
    train, test = inctrl_holdout(normals)
    for split, chosen in (("train", train), ("test", test)):
        for image, name in chosen:
            out.normal(image, class_name, name, split)


def dagm(raw: Path, out: LayoutWriter) -> None:
    """DAGM 2007 (Kaggle upload) as AnomalyCLIP ``generate_dataset_json/DAGM.py`` reads it.

    ``Class<N>/{Train,Test}/*.PNG``; an image is defective when ``<split>/Label/`` holds
    ``<stem>_label.PNG``. Only each class's ``Test`` folder is tested (normal and
    defective images, with masks). Normal ``Train`` images go to ``train/good`` (prompts
    for few-shot methods); defective ``Train`` images are not used. Class names are the
    folder names (``Class1`` ... ``Class10``), as the official script writes them.
    """
    classes = [d for d in subfolders(raw) if (d / "Test").is_dir()] if raw.is_dir() else []
    if not classes:
        raise DatasetError(f"unknown layout: no Class<N>/Test/ folders in {raw}.")
    for class_dir in classes:
        for split in ("Train", "Test"):
            labels = images_by_stem(class_dir / split / "Label", "_label")
            for image in image_files(class_dir / split):
                if image.stem not in labels:
                    out.normal(image, class_dir.name, image.name, split.lower())
                elif split == "Test":
                    out.anomalous(image, class_dir.name, "defect", image.name, labels[image.stem])


def split_tree_or(raw: Path, out: LayoutWriter, convert: Callable[[Path, LayoutWriter], None],
                  class_name: str) -> None:
    """A one-class set whose official raw form may come already split: ``convert(raw, out)`` on the
    original download, :func:`mvtec_like` (class ``class_name``) on a ``<class>/test/<good|defect>/``
    tree.

    The copies the AnomalyCLIP README links are such trees, read as they are by the official
    scripts: HeadCT's Google Drive archive is ``brain/test/{good,<defect>}/NNN.png`` (``head_ct.py``),
    the SDD folder ``electrical_commutators/{train,test,ground_truth}/`` (``SDD.py``).
    """
    if split_class_dirs(raw):
        mvtec_like(raw, out, class_name=class_name)
    else:
        convert(raw, out)


# ---------------------------------------------------------------- segmentation-only sets


def all_anomalous(raw: Path, out: LayoutWriter, images: str, masks: str, class_name: str, defect: str) -> None:
    """Sets where every image shows a lesion (polyps, thyroid nodules): ``raw/<images>/`` + ``raw/<masks>/``.

    AnomalyCLIP ``kvasir.py``, ``clinicDB.py``, ``colonDB.py``, ``tn3k.py``: every image is
    anomalous, with its mask, so these sets give pixel-level metrics only. Masks are
    paired by stem (the official scripts pair the sorted lists by position, which
    silently shifts every later pair when one file is missing).
    """
    mask_files = images_by_stem(require_dir(raw, masks))
    for image in image_files(require_dir(raw, images)):
        out.anomalous(image, class_name, defect, image.name, mask_of(image, mask_files))


def endotect(raw: Path, out: LayoutWriter) -> None:
    """EndoTect 2020 Segmentation Test Dataset, as AnomalyCLIP ``generate_dataset_json/endoTect.py`` reads it.

    Every folder of ``raw`` except ``masks/`` holds images (``good/`` normal, any other
    anomalous, defect = folder name); masks in ``raw/masks/`` share their image's stem.
    Class ``colon``.
    """
    masks = images_by_stem(require_dir(raw, "masks"))
    for folder in subfolders(raw):
        if folder.name == "masks":
            continue
        for image in image_files(folder):
            if folder.name == NORMAL:
                out.normal(image, "colon", image.name)
            else:
                out.anomalous(image, "colon", folder.name, image.name, mask_of(image, masks))


def isic(raw: Path, out: LayoutWriter) -> None:
    """ISIC 2016 (ISBI) as AnomalyCLIP ``generate_dataset_json/isbi.py`` reads it: class ``skin``.

    ``skin/test/<specie>/*.jpg`` (``good`` normal, any other anomalous) and the masks in
    ``skin/ISBI2016_ISIC_Part1_Test_GroundTruth/<stem>_Segmentation.png``; ``raw`` may be
    the folder holding ``skin/`` or ``skin/`` itself.
    """
    base = raw / "skin" if (raw / "skin").is_dir() else raw
    masks = images_by_stem(require_dir(base, "ISBI2016_ISIC_Part1_Test_GroundTruth"), "_Segmentation")
    for folder in subfolders(require_dir(base, "test")):
        for image in image_files(folder):
            if folder.name == NORMAL:
                out.normal(image, "skin", image.name)
            else:
                out.anomalous(image, "skin", folder.name, image.name, mask_of(image, masks))


# ---------------------------------------------------------------- image-level sets


def normal_and_other_folders(raw: Path, out: LayoutWriter, normal: str, class_name: str, base: str = "") -> None:
    """Image-level sets with one folder per label, all in ``test`` (AnomalyCLIP's medical scripts).

    Every subfolder of ``raw/<base>`` (or of ``raw`` when it has no ``base``) except
    ``normal`` is anomalous, its name the defect: ``brainmri.py`` (base
    ``brain_tumor_dataset``, normal ``no``), ``br35.py`` (normal ``no``: ``yes`` and
    ``pred`` are anomalous), ``covid.py`` (normal ``NORMAL``, via :func:`covid19`). Folder names are
    matched case-insensitively. Images may sit in an ``images/`` subfolder (COVID-19 Radiography
    Database style; its ``masks/`` are lung masks, not lesions, and are ignored).
    """
    root = raw / base if base and (raw / base).is_dir() else raw
    folders = subfolders(root)
    if not any(f.name.lower() == normal.lower() for f in folders):
        raise DatasetError(f"unknown layout: no {normal}/ folder in {root}.")
    for folder in folders:
        for image in image_files(folder) or image_files(folder / "images"):
            if folder.name.lower() == normal.lower():
                out.normal(image, class_name, image.name)
            else:
                out.anomalous(image, class_name, folder.name, image.name)


KAGGLE_COVID = "COVID-19_Radiography_Dataset"  # the folder of the later Kaggle releases


def covid19(raw: Path, out: LayoutWriter) -> None:
    """COVID-19 Radiography Database as AnomalyCLIP ``generate_dataset_json/covid.py`` reads it: class ``chest``.

    The official layout is flat, ``<root>/<specie>/<image>``, and every folder except ``NORMAL``
    is anomalous (the release of the copy on the AnomalyCLIP README's Google Drive link; folders
    ``COVID-19``, ``NORMAL``, ``Viral Pneumonia``). The current Kaggle archive is a later release,
    ``COVID-19_Radiography_Dataset/{COVID,Lung_Opacity,Normal,Viral Pneumonia}/{images,masks}``:
    it is read by the same rule (``Normal`` normal; the ``masks/`` are lung masks, not lesions,
    and are ignored), with one warning that its test set is not the paper's, giving its counts.
    """
    root = raw / KAGGLE_COVID if (raw / KAGGLE_COVID).is_dir() else raw
    kaggle = any((folder / "images").is_dir() for folder in subfolders(root)) if root.is_dir() else False
    normal_and_other_folders(root, out, normal="NORMAL", class_name="chest")
    if kaggle:
        counts = {f.name: len(image_files(f) or image_files(f / "images")) for f in subfolders(root)}
        normal = sum(n for name, n in counts.items() if name.lower() == "normal")
        warnings.warn(
            f"{root} is a later release of the COVID-19 Radiography Database (Kaggle: COVID, Lung_Opacity, "
            f"Normal, Viral Pneumonia), not the copy the AnomalyCLIP paper tested: its test set is not the "
            f"paper's ({normal} normal, {sum(counts.values()) - normal} anomalous: "
            + ", ".join(f"{name} {n}" for name, n in counts.items()) + "), so its numbers are not comparable "
            "with the paper's COVID-19 row (see PROTOCOL.md; the paper's copy: the AnomalyCLIP README's "
            "Google Drive link).", stacklevel=2)


def brainmri_inctrl(raw: Path, out: LayoutWriter) -> None:
    """BrainMRI as InCTRL ``datasets/preprocess/convert_BrainMRI.py`` converts it: class ``brainmri``.

    ``no/`` normals split by :func:`inctrl_holdout` (sorted by name; the official script
    uses ``os.listdir`` order), every ``yes/`` image to ``test/defect``.
    """
    root = raw / "brain_tumor_dataset" if (raw / "brain_tumor_dataset").is_dir() else raw
    _write_holdout(out, [(p, p.name) for p in image_files(require_dir(root, "no"))], "brainmri")
    for image in image_files(require_dir(root, "yes")):
        out.anomalous(image, "brainmri", "defect", image.name)


def headct(raw: Path, out: LayoutWriter, class_name: str) -> None:
    """HeadCT as InCTRL ``datasets/preprocess/convert_HeadCT.py`` converts it.

    ``labels.csv`` (columns ``id, hemorrhage``) lists ``head_ct/NNN.png`` (the Kaggle
    archive nests it as ``head_ct/head_ct/``). Normal ids are split by
    :func:`inctrl_holdout` in file order; hemorrhages go to ``test/defect``. AnomalyCLIP's
    ``head_ct.py`` reads the ``test`` split of this output under the class ``brain``;
    InCTRL names it ``headct``.
    """
    folder = raw / "head_ct" / "head_ct" if (raw / "head_ct" / "head_ct").is_dir() else require_dir(raw, "head_ct")
    labels = require_file(raw, "labels.csv")
    normals, seen = [], set()
    for row in csv_rows(labels):
        try:
            image, hemorrhage = folder / f"{int(row['id']):03d}.png", int(row["hemorrhage"])
        except (KeyError, ValueError):
            raise DatasetError(f"{labels}: row {row} is not 'id, hemorrhage' with two integers.") from None
        if image.name in seen:
            raise DatasetError(f"{labels}: id {int(row['id'])} is listed twice; keep one row per image "
                               "(the Kaggle file lists each of its 200 ids once).")
        seen.add(image.name)
        if hemorrhage:
            out.anomalous(image, class_name, "defect", image.name)
        else:
            normals.append((image, image.name))
    _write_holdout(out, normals, class_name)


def elpv(raw: Path, out: LayoutWriter) -> None:
    """ELPV as InCTRL ``datasets/preprocess/convert_elpv.py`` converts it: one class ``elpv``.

    Each line of ``labels.csv`` is ``images/cellNNNN.png <defect probability> <mono|poly>``.
    Probability 0 is normal (split by :func:`inctrl_holdout` in file order), probability 1
    is anomalous (defect = cell type, ``test/mono`` or ``test/poly``); the uncertain
    probabilities 1/3 and 2/3 are not used.
    """
    labels = require_file(raw, "labels.csv")
    normals = []
    for line in labels.read_text(encoding="utf-8-sig").splitlines():
        if not line.strip():
            continue
        try:
            relative, probability, cell_type = line.split()
            probability = float(probability)
        except ValueError:
            raise DatasetError(f"{labels}: line {line!r} is not '<image> <probability> <mono|poly>'.") from None
        image = raw / relative
        if probability == 1:
            out.anomalous(image, "elpv", cell_type, image.name)
        elif probability == 0:
            normals.append((image, image.name))
    _write_holdout(out, normals, "elpv")


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

