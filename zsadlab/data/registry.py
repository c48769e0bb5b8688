"""The dataset registry: one frozen entry per dataset, with its converter.

``REGISTRY`` maps a short name (``zsadlab data prepare NAME``) to a
:class:`DatasetEntry`. Adding a dataset = writing its converter in
``converters.py`` (or reusing one through ``functools.partial``) and adding one
entry here. ``names()`` lists the registered datasets.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from . import converters as cv
from . import synthetic
from .errors import DatasetError
from .writer import LayoutWriter


@dataclass(frozen=True)
class DatasetEntry:
    """What the project knows about one dataset.

    Exactly one of ``convert`` (raw folder -> common layout) and ``generate``
    (seed -> common layout, synthetic sets) is set. ``url``/``sha256``/``archive``
    are set only where a direct, checksummed download exists; otherwise
    ``manual_steps`` says how to obtain the raw folder.
    """

    name: str
    title: str
    domain: str  # "industrial" | "medical"
    masks: bool  # pixel-level ground truth available
    source: str
    license: str
    raw_layout: str
    convert: Callable[[Path, LayoutWriter], None] | None = None
    generate: Callable[[LayoutWriter, int], None] | None = None
    url: str | None = None
    sha256: str | None = None
    archive: str | None = None
    manual_steps: str = ""

    @property
    def protocol(self) -> str:
        """The official script(s) the converter reproduces (details in ``PROTOCOL.md``)."""
        return PROTOCOLS.get(self.name, "none official: zsadlab's own")

    @property
    def synthetic(self) -> bool:
        """True for the generated smoke sets (no raw download)."""
        return self.generate is not None


MVTEC_LIKE = "<class>/train/good/*, <class>/test/<defect>/*, <class>/ground_truth/<defect>/<name>_mask.png"
POLYP_LAYOUT = "images/<name>.png|jpg and masks/<name>.png|jpg (every image shows a polyp)"
POLYP_SOURCE = "figshare Polyp_DataSet (the PraNet test sets), linked from the AnomalyCLIP README"
POLYP_STEPS = "Download the PraNet TestDataset from figshare and point --raw at TestDataset/{folder}."
KAGGLE_STEPS = "Download https://www.kaggle.com/datasets/{slug} (Kaggle account needed) and unzip it; point --raw at {folder}."

ENTRIES = [
    DatasetEntry(
        "mvtec", "MVTec AD", "industrial", True, "https://www.mvtec.com/company/research/datasets/mvtec-ad",
        "CC BY-NC-SA 4.0", MVTEC_LIKE + " (15 classes)", convert=cv.mvtec_like,
        url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
        "mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        archive="mvtec_anomaly_detection.tar.xz",
    ),
    DatasetEntry(
        "visa", "VisA", "industrial", True, "https://github.com/amazon-science/spot-diff", "CC BY 4.0",
        "<cls>/Data/Images/{Normal,Anomaly}/*.JPG, <cls>/Data/Masks/Anomaly/*.png, split_csv/1cls.csv",
        convert=cv.visa, url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362", archive="VisA_20220922.tar",
    ),
    DatasetEntry(
        "mpdd", "MPDD", "industrial", True, "https://github.com/stepanje/MPDD", "CC BY-NC-SA 4.0",
        MVTEC_LIKE + " (6 classes)", convert=cv.mvtec_like,
        manual_steps="Follow the OneDrive link in the README of github.com/stepanje/MPDD, unzip, point --raw at MPDD/.",
    ),
    DatasetEntry(
        "btad", "BTAD", "industrial", True, "https://avires.dimi.uniud.it/papers/btad/btad.zip", "CC BY-NC-SA 4.0",
        "01..03/train/ok/*, 01..03/test/{ok,ko}/*, 01..03/ground_truth/ko/<name>.png", convert=cv.btad,
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a", archive="btad.zip",
    ),
    *[
        DatasetEntry(
            name, title, "industrial", True, "https://www.vicos.si/resources/kolektorsdd/", "CC BY-NC-SA 4.0",
            "kosNN/PartK.jpg with kosNN/PartK_label.bmp (empty label = normal); or the AnomalyCLIP README's "
            "already split folder <class>/{train,test}/{good,defect}/ with <class>/ground_truth/defect/",
            convert=partial(cv.split_tree_or, convert=partial(cv.kolektor_sdd, class_name=class_name),
                            class_name=class_name),
            manual_steps="Download KolektorSDD.zip from www.vicos.si/resources/kolektorsdd, unzip, point --raw at it "
            "(or point --raw at the folder holding electrical_commutators/ from the AnomalyCLIP README's Drive link).",
        )
        for name, title, class_name in [
            ("sdd", "KolektorSDD (SDD), AnomalyCLIP protocol", "electrical commutators"),
            ("sdd_inctrl", "KolektorSDD (SDD), InCTRL protocol", "SDD"),
        ]
    ],
    DatasetEntry(
        "dagm", "DAGM 2007", "industrial", True,
        "https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection",
        "research use only (see source)", "Class<N>/{Train,Test}/*.PNG with {Train,Test}/Label/<name>_label.PNG",
        convert=cv.dagm,
        manual_steps=KAGGLE_STEPS.format(
            slug="mhskjelvareid/dagm-2007-competition-dataset-optical-inspection", folder="the folder of Class1..Class10"
        ),
    ),
    DatasetEntry(
        "dtd_synthetic", "DTD-Synthetic", "industrial", True,
        "AnomalyCLIP README (github.com/zqhang/AnomalyCLIP) -> Google Drive", "not stated (DTD: research use)",
        MVTEC_LIKE + " (12 texture classes)", convert=cv.mvtec_like,
        manual_steps="Download DTD-Synthetic from the Google Drive link in the AnomalyCLIP README; point --raw at it.",
    ),
    *[
        DatasetEntry(
            name, title, "medical", True, POLYP_SOURCE, "not stated", POLYP_LAYOUT,
            convert=partial(cv.all_anomalous, images="images", masks="masks", class_name="colon", defect="polyp"),
            manual_steps=POLYP_STEPS.format(folder=folder),
        )
        for name, title, folder, script in [
            ("clinicdb", "CVC-ClinicDB", "CVC-ClinicDB", "clinicDB.py"),
            ("colondb", "CVC-ColonDB", "CVC-ColonDB", "colonDB.py"),
            ("kvasir", "Kvasir-SEG", "Kvasir", "kvasir.py"),
        ]
    ],
    *[
        DatasetEntry(
            name, title, "medical", True, f"{origin} (AnomalyCLIP README -> Google Drive)", "not stated", layout,
            convert=convert,
            manual_steps=f"Download {link} from the AnomalyCLIP README's link, unzip, point --raw at {folder}.",
        )
        for name, title, origin, layout, script, convert, link, folder in [
            ("isic", "ISIC 2016 (skin lesions)", "ISBI 2016 ISIC Part 1 test set (challenge.isic-archive.com)",
             "skin/test/<specie>/*.jpg and skin/ISBI2016_ISIC_Part1_Test_GroundTruth/<name>_Segmentation.png",
             "isbi.py", cv.isic, "ISIC", "the folder holding skin/"),
            ("endo", "Endo (EndoTect 2020 segmentation test set)", "EndoTect 2020 Segmentation Test Dataset",
             "images/<name>.jpg and masks/<name>.* (every folder except masks/ holds images; good/ would be normal)",
             "endoTect.py", cv.endotect, "Endo", "the unzipped folder"),
        ]
    ],
    *[
        DatasetEntry(
            name, title, "medical", True,
            "https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation (Baidu / Google Drive)",
            "not stated",
            f"trainval-image/, trainval-mask/, test-image/, test-mask/ (only {split}-* is used; every image is "
            f"anomalous, with its nodule mask, as the official tn3k.py reads it){note}",
            convert=partial(cv.all_anomalous, images=f"{split}-image", masks=f"{split}-mask", class_name="thyroid",
                            defect="nodule"),
            manual_steps="Follow the Baidu / Google Drive link in the TRFE-Net README, unzip, point --raw at tn3k/ "
            "(tn3k and tn3k_trainval are prepared from the same folder).",
        )
        for name, title, split, note in [
            ("tn3k", "TN3K (thyroid ultrasound)", "test", ""),
            ("tn3k_trainval", "TN3K trainval (fine-tuning on thyroid ultrasound)", "trainval",
             "; the training set of the TN3K fine-tuning experiment"),
        ]
    ],
    *[
        DatasetEntry(
            name, title, "medical", False, "https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
            "not stated", "head_ct/[head_ct/]000.png ... 199.png and labels.csv (columns id, hemorrhage); or the "
            "AnomalyCLIP README's Google Drive archive, already split: brain/test/{good,<defect>}/NNN.png",
            convert=partial(cv.split_tree_or, convert=partial(cv.headct, class_name=class_name), class_name=class_name),
            manual_steps=KAGGLE_STEPS.format(slug="felipekitamura/head-ct-hemorrhage",
                                             folder="the folder holding labels.csv")
            + " Or download the HeadCT archive from the AnomalyCLIP README's Google Drive link, unzip it and point "
            "--raw at the folder holding brain/.",
        )
        for name, title, class_name in [
            ("headct", "HeadCT, AnomalyCLIP protocol", "brain"),
            ("headct_inctrl", "HeadCT, InCTRL protocol", "headct"),
        ]
    ],
    *[
        DatasetEntry(
            name, title, "medical", False,
            "https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection", "not stated",
            "[brain_tumor_dataset/]{no,yes}/* (every folder except no/ is anomalous)",
            convert=convert,
            manual_steps=KAGGLE_STEPS.format(slug="navoneel/brain-mri-images-for-brain-tumor-detection",
                                             folder="the folder holding brain_tumor_dataset/"),
        )
        for name, title, convert in [
            ("brainmri", "BrainMRI, AnomalyCLIP protocol",
             partial(cv.normal_and_other_folders, normal="no", class_name="brain", base="brain_tumor_dataset")),
            ("brainmri_inctrl", "BrainMRI, InCTRL protocol", cv.brainmri_inctrl),
        ]
    ],
    DatasetEntry(
        "br35h", "Br35H", "medical", False, "https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
        "not stated", "no/* (normal); yes/*, pred/* and any other folder are anomalous",
        convert=partial(cv.normal_and_other_folders, normal="no", class_name="brain"),
        manual_steps=KAGGLE_STEPS.format(slug="ahmedhamada0/brain-tumor-detection", folder="the folder holding no/"),
    ),
    DatasetEntry(
        "covid19", "COVID-19 Radiography", "medical", False,
        "AnomalyCLIP README -> Google Drive (the paper's copy); later releases on "
        "https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database", "not stated",
        "official: <root>/<specie>/<image> with NORMAL/ normal and every other folder (COVID-19, Viral Pneumonia) "
        "anomalous; Kaggle: COVID-19_Radiography_Dataset/{COVID,Lung_Opacity,Normal,Viral Pneumonia}/{images,masks} "
        "(a later release: another test set, with a warning)",
        convert=cv.covid19,
        manual_steps="Download COVID-19 from the AnomalyCLIP README's Google Drive link (the paper's copy), unzip, "
        "point --raw at the folder holding NORMAL/. The Kaggle archive "
        "(kaggle.com/datasets/tawsifurrahman/covid19-radiography-database) is a later release with another test set; "
        "point --raw at the folder holding COVID-19_Radiography_Dataset/.",
    ),
    DatasetEntry(
        "elpv", "ELPV (solar cells), InCTRL protocol", "industrial", False,
        "PyPI elpv-dataset (github.com/zae-bayern/elpv-dataset)", "CC BY-NC-SA 4.0",
        "images/cellNNNN.png and labels.csv (lines: images/<file> <defect probability> <mono|poly>)", convert=cv.elpv,
        manual_steps="pip install elpv-dataset, then point --raw at the package's data folder: "
        "python -c \"import elpv_dataset, pathlib; print(pathlib.Path(elpv_dataset.__file__).parent / 'data')\"",
    ),
    DatasetEntry(
        "magnetic_tile", "Magnetic Tile Defects", "industrial", True,
        "https://github.com/abin24/Magnetic-tile-defect-datasets.", "none stated; cite Huang et al. 2018",
        "MT_<Type>/Imgs/<id>.jpg with mask <id>.png; MT_Free is normal", convert=cv.magnetic_tile,
        manual_steps="git clone https://github.com/abin24/Magnetic-tile-defect-datasets. and point --raw at the clone.",
    ),
    DatasetEntry(
        "mpdd_metal_plate", "MPDD metal_plate (re-split)", "industrial", True,
        "https://github.com/BupeshKumarR/defect-segmentation-for-mpdd", "CC BY-NC-SA 4.0 (MPDD)",
        "metal_plate/{train,val,test}/{images,masks}/<split>_NNNNN.png (empty mask = normal)",
        convert=cv.mpdd_metal_plate,
        manual_steps="git clone https://github.com/BupeshKumarR/defect-segmentation-for-mpdd and point --raw at the "
        "folder holding metal_plate/.",
    ),
    DatasetEntry(
        "synthetic_industrial", "Synthetic industrial (smoke)", "industrial", True,
        "generated by zsadlab from scikit-image's bundled photographs",
        "generated (photos: CC0)",
        "none (generated from a seed)", generate=synthetic.synthetic_industrial,
    ),
    DatasetEntry(
        "synthetic_ultrasound", "Synthetic thyroid ultrasound (smoke)", "medical", True, "generated by zsadlab",
        "generated", "none (generated from a seed)", generate=synthetic.synthetic_ultrasound,
    ),
]

AC, IC = "AnomalyCLIP generate_dataset_json/", "InCTRL datasets/preprocess/"
PROTOCOLS = {  # name -> the official script(s) its converter reproduces; PROTOCOL.md has the rules
    "mvtec": AC + "mvtec.py", "visa": AC + "visa.py", "mpdd": AC + "mpdd.py", "btad": AC + "btad.py",
    "sdd": AC + "SDD.py on the output of " + IC + "convert_SDD.py", "sdd_inctrl": IC + "convert_SDD.py",
    "dagm": AC + "DAGM.py (Test folders only)", "dtd_synthetic": AC + "DTD.py", "isic": AC + "isbi.py",
    "clinicdb": AC + "clinicDB.py", "colondb": AC + "colonDB.py", "kvasir": AC + "kvasir.py",
    "endo": AC + "endoTect.py",
    "tn3k": AC + "tn3k.py", "tn3k_trainval": AC + "tn3k.py on trainval-image/ and trainval-mask/",
    "headct": AC + "head_ct.py on the output of " + IC + "convert_HeadCT.py", "headct_inctrl": IC + "convert_HeadCT.py",
    "brainmri": AC + "brainmri.py", "brainmri_inctrl": IC + "convert_BrainMRI.py", "br35h": AC + "br35.py",
    "covid19": AC + "covid.py", "elpv": IC + "convert_elpv.py",
}

REGISTRY: dict[str, DatasetEntry] = {entry.name: entry for entry in ENTRIES}

# Public split sizes (images, classes) of the datasets the series trains on: what the course plan prices
# a training with when the data is not prepared on this machine (a prepared dataset is counted instead).
# MVTec AD and VisA: the AnomalyCLIP meta.json splits; TN3K: TRFE-Net's trainval/test; ColonDB: 380 images.
SPLIT_IMAGES: dict[str, dict[str, int]] = {
    "mvtec": {"train": 3629, "test": 1725, "classes": 15},
    "visa": {"train": 8659, "test": 2162, "classes": 12},
    "mpdd": {"train": 888, "test": 458, "classes": 6},
    "btad": {"train": 1799, "test": 741, "classes": 3},
    "tn3k": {"test": 614, "classes": 1},
    "tn3k_trainval": {"test": 2879, "classes": 1},
    "colondb": {"test": 380, "classes": 1},
}


def split_images(name: str, split: str, classes: int | None = None, max_images_per_class: int | None = None) -> int | None:
    """Images in ``split`` of dataset ``name`` by its public split sizes (None: not recorded); the
    ``inctrl_train`` pool is both splits; a budget keeps at most ``max_images_per_class`` of ``classes``."""
    sizes = SPLIT_IMAGES.get(name)
    if sizes is None:
        return None
    images = sizes.get("train", 0) + sizes["test"] if split == "inctrl_train" else sizes.get(split)
    if images is None or max_images_per_class is None:
        return images
    return min(images, min(classes or sizes["classes"], sizes["classes"]) * max_images_per_class)


# The 17 datasets of the AnomalyCLIP paper's zero-shot tables (Table 1: industrial, Table 2: medical).
ANOMALYCLIP_BENCHMARK = ("mvtec", "visa", "mpdd", "btad", "sdd", "dagm", "dtd_synthetic",
                         "headct", "brainmri", "br35h", "covid19", "isic", "colondb", "clinicdb", "kvasir", "endo", "tn3k")


def names() -> list[str]:
    """Names of all registered datasets, in registry order."""
    return list(REGISTRY)


def entry(name: str) -> DatasetEntry:
    """The registry entry of ``name``; :class:`DatasetError` listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}.") from None


def how_to_get(item: DatasetEntry) -> str:
    """One paragraph telling a user how to obtain the raw folder of ``item``."""
    if item.synthetic:
        return f"{item.title} is generated: `zsadlab data synth {item.name} --out data/{item.name}`."
    if item.url:
        return f"`zsadlab data download {item.name}` fetches and checks {item.archive} from {item.url}."
    return f"{item.title} has no direct download URL. {item.manual_steps}"


def table() -> str:
    """The registry as a plain-text table (what ``zsadlab data list`` prints)."""
    header = ("name", "domain", "masks", "download", "license", "source")
    rows = [header] + [
        (e.name, e.domain, "yes" if e.masks else "no",
         "synthetic" if e.synthetic else ("direct" if e.url else "manual"), e.license, e.source)
        for e in REGISTRY.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows)
