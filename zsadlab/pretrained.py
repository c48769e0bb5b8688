"""Official checkpoints, pulled once and verified: ``pull("anomalyclip-mvtec")``.

The official AnomalyCLIP prompt learners live in the repository zqhang/AnomalyCLIP, the
official VAND (APRIL-GAN) linear layers in ByChelsea/VAND-APRIL-GAN (``exps/pretrained/``,
added in 26f19a6); they are downloaded from GitHub's raw URL at a pinned commit into a
cache folder (``$ZSADLAB_HOME``, default ``~/.cache/zsadlab``), as ``<home>/<name>/<file>``.
A file is verified by its git blob SHA-1 (what ``git hash-object FILE`` prints)
*before* it is moved into place, atomically; a file that does not match is
deleted and nothing is kept. A file downloaded by hand is registered with
``pull(name, from_file=FILE)`` (CLI: ``zsadlab pull NAME --from FILE``), with the
same verification.

InCTRL's official weights are on a Google Drive folder, which cannot be
downloaded without a browser and whose files have no published hash: that entry
accepts ``from_file`` only, and checks that the file loads safely as an InCTRL
state dict (its head keys ``adapter.*``, ``diff_head.*``, ``diff_head_ref.*``
present); its sha256 is printed on registration so that it can be compared
with a colleague's copy. This is a format check, not an authenticity check.

For notebooks: :func:`available` (on disk?), :func:`path` (load-or-pull) and
:func:`official_for` (which checkpoint a method trained on a dataset has).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .backbone import WeightsUnavailableError, host_reachable
from .errors import InputError
from .data.download import download, sha256_of
from .utils import atomic_path, load_torch_file

HOME_ENV = "ZSADLAB_HOME"
DEFAULT_HOME = "~/.cache/zsadlab"
ANOMALYCLIP_COMMIT = "45ed4dd35c05797d854294b5e8d585c545920089"
ANOMALYCLIP_RAW = f"https://raw.githubusercontent.com/zqhang/AnomalyCLIP/{ANOMALYCLIP_COMMIT}/"
VAND_COMMIT = "f13b8a634e04f9fde8fa03db125b25af5695d8e1"  # the checkpoints were added in 26f19a6
VAND_RAW = f"https://raw.githubusercontent.com/ByChelsea/VAND-APRIL-GAN/{VAND_COMMIT}/"
INCTRL_DRIVE = "https://drive.google.com/drive/folders/1McmfxF8_H0BeRvcJ_poGIB-ATQCDDEIa"  # mala-lab/InCTRL README
CHUNK = 1 << 20


@dataclass(frozen=True)
class Pretrained:
    """One official checkpoint: where it comes from and how a copy is verified."""

    name: str
    method: str  # "anomalyclip" | "inctrl" | "vand"
    trained_on: str
    filename: str  # name of the file in <home>/<name>/
    url: str | None  # None: no direct download; only a file given by hand is accepted
    git_sha1: str | None  # git blob SHA-1; None: checked by its format (see the module docstring)
    page: str  # where a person downloads it by hand
    dataset: str | None = None  # registry name of the training set (see official_for)


def _in_git(name: str, method: str, trained_on: str, dataset: str, url: str, git_sha1: str) -> Pretrained:
    """An official checkpoint committed to a GitHub repository: raw URL at a pinned commit, git blob SHA-1."""
    return Pretrained(name, method, trained_on, os.path.basename(url), url, git_sha1, url, dataset)


PRETRAINED: dict[str, Pretrained] = {
    # The official folder names are inverted: checkpoints/9_12_4_multiscale_visa/ holds the model
    # trained on MVTec AD, checkpoints/9_12_4_multiscale/ the one trained on VisA (the official
    # test.sh evaluates the first on VisA and the second on MVTec AD, the zero-shot protocol).
    "anomalyclip-mvtec": _in_git("anomalyclip-mvtec", "anomalyclip", "MVTec AD", "mvtec",
                                 ANOMALYCLIP_RAW + "checkpoints/9_12_4_multiscale_visa/epoch_15.pth",
                                 "72adc786e031b49ea288ba5f815f0d38cf158708"),
    "anomalyclip-visa": _in_git("anomalyclip-visa", "anomalyclip", "VisA", "visa",
                                ANOMALYCLIP_RAW + "checkpoints/9_12_4_multiscale/epoch_15.pth",
                                "c90f1d9d92d158b436a8fc193f984d4cec8b1fc8"),
    # VAND's test_zero_shot.sh / test_few_shot.sh evaluate mvtec_pretrained.pth on VisA and
    # visa_pretrained.pth on MVTec AD (the zero-shot protocol; the names are not inverted).
    "vand-mvtec": _in_git("vand-mvtec", "vand", "MVTec AD", "mvtec", VAND_RAW + "exps/pretrained/mvtec_pretrained.pth",
                          "a057cec6c2ba5996baa0160a51e155908156813f"),
    "vand-visa": _in_git("vand-visa", "vand", "VisA", "visa", VAND_RAW + "exps/pretrained/visa_pretrained.pth",
                         "86d6848c543f8393663d35c0333498ffb5ce9b68"),
    "inctrl": Pretrained("inctrl", "inctrl", "the official auxiliary data (see the InCTRL README)",
                         "inctrl.pth", None, None, INCTRL_DRIVE),
}


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``home`` if given, else ``$ZSADLAB_HOME``, else ``~/.cache/zsadlab``; an
    :class:`InputError` naming where it came from when that path is a file."""
    folder = Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()
    if folder.exists() and not folder.is_dir():
        source = "home=" if home else (f"${HOME_ENV}=" if os.environ.get(HOME_ENV) else "the default cache folder ")
        raise InputError(f"{source}{folder} is a file, not a folder: point {HOME_ENV} at a folder (or unset it to "
                         f"use {DEFAULT_HOME}).")
    return folder


def git_blob_sha1(path: str | os.PathLike) -> str:
    """``sha1(b"blob <size>\\0" + bytes)`` of a file: what ``git hash-object`` prints."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def entry(name: str) -> Pretrained:
    """The registry entry ``name``; a ``ValueError`` listing the names when unknown."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown checkpoint {name!r}; choose one of {sorted(PRETRAINED)}")
    return PRETRAINED[name]


def official_for(method: str, dataset: str) -> str | None:
    """The registry name of the official checkpoint of ``method`` trained on the dataset registered as
    ``dataset`` (``official_for("vand", "mvtec") == "vand-mvtec"``), or ``None`` when there is none.
    Few-shot variants share their zero-shot method's checkpoint (``vand_fewshot`` -> ``vand``)."""
    family = method.removesuffix("_fewshot")
    return next((item.name for item in PRETRAINED.values() if (item.method, item.dataset) == (family, dataset)), None)


def target(name: str, home: str | os.PathLike | None = None) -> Path:
    """Where checkpoint ``name`` lives once pulled: ``<home>/<name>/<file>``."""
    return home_dir(home) / name / entry(name).filename


def available(name: str, home: str | os.PathLike | None = None) -> bool:
    """True when ``name`` has been pulled (files are verified before they get there)."""
    return target(name, home).is_file()


def path(name: str, home: str | os.PathLike | None = None) -> Path:
    """The local file of checkpoint ``name``, pulled first if it is not there yet (load-or-pull)."""
    return target(name, home) if available(name, home) else pull(name, home=home)


def verify(item: Pretrained, file: Path, origin: str) -> None:
    """Raise ``ValueError`` (naming ``origin``) unless ``file`` is checkpoint ``item``."""
    if item.git_sha1 is not None:
        found = git_blob_sha1(file)
        if found != item.git_sha1:
            raise ValueError(
                f"{origin} is not the official {item.name} checkpoint: its git blob SHA-1 is {found}, expected "
                f"{item.git_sha1}. Nothing was kept; download it again from {item.page}."
            )
        return
    try:
        state = load_torch_file(file, what=f"{item.name} checkpoint")
    except ValueError as err:  # name the user's file, not the temporary copy it is checked in
        raise ValueError(str(err).replace(str(file), origin) + " Nothing was kept.") from None
    state = state.get("model_state", state) if isinstance(state, dict) else state
    heads = ("adapter.", "diff_head.", "diff_head_ref.")  # the official InCTRL head modules
    if not isinstance(state, dict) or not all(any(k.startswith(h) for k in state) for h in heads):
        raise ValueError(f"{origin} is not an InCTRL checkpoint: expected a state dict (or {{'model_state': ...}}) "
                         f"with keys under {', '.join(h + '*' for h in heads)}. Nothing was kept.")


def pull(name: str, from_file: str | os.PathLike | None = None, home: str | os.PathLike | None = None) -> Path:
    """Download (or register ``from_file``) the official checkpoint ``name``, verified; return its path.

    An already pulled file is returned at once. The download resumes an
    interrupted ``.part`` file; offline it fails within seconds with the URL and
    the ``from_file`` fix. A file that fails verification is not kept.
    """
    item, final = entry(name), target(name, home)
    if from_file is not None:
        return _register(item, Path(from_file).expanduser(), final)
    if final.is_file():
        return final
    if item.url is None:
        raise WeightsUnavailableError(
            f"{name} cannot be downloaded automatically: download it by hand from {item.page}, then run "
            f"`zsadlab pull {name} --from FILE` (Python: pull({name!r}, from_file=FILE)).")
    _check_online(item)
    staging = final.with_name(f".{final.name}.download")  # download() resumes from <staging>.part
    download(item.url, staging)
    try:
        verify(item, staging, f"the download from {item.url}")
    except ValueError:
        staging.unlink()
        raise
    os.replace(staging, final)
    return final


def _register(item: Pretrained, source: Path, final: Path) -> Path:
    """Copy a file downloaded by hand into the cache, verified before it gets its final name."""
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist: give the path of the downloaded {item.name} file.")
    with atomic_path(final) as tmp:
        shutil.copyfile(source, tmp)
        verify(item, tmp, str(source))
    if item.git_sha1 is None:
        print(f"zsadlab: registered {source} as {item.name} (sha256 {sha256_of(final)})", file=sys.stderr)
    return final


def _check_online(item: Pretrained) -> None:
    """Fail within seconds, with the URL and the manual fix, when the download host cannot be reached."""
    url = urllib.parse.urlsplit(item.url)
    port = url.port or (443 if url.scheme == "https" else 80)
    if not host_reachable(url.hostname or "", port):
        raise WeightsUnavailableError(
            f"cannot reach {url.hostname} to download {item.name} ({item.url}). Download that file on a "
            f"machine with internet access, then run `zsadlab pull {item.name} --from FILE` "
            f"(Python: pull({item.name!r}, from_file=FILE)).")
