"""Scoring the user's own images: ``scores.csv`` and one overlay PNG per image.

One run's outputs are complete and consistent: every input has one row in ``scores.csv``
(``path, score, overlay, status``), read or not; an image that cannot be read is reported
(``status`` ``skipped: <reason>``, empty score) while the others are scored; inputs that share a
name (``a/x.png``, ``b/x.png``, ``a/x.jpg``) get distinct overlay files; the overlays are written
first, then ``scores.csv`` atomically (replacing an earlier run's), by the ``csv`` module.

Nothing the user owns is replaced: the output folder may not hold an input image, and an existing
file is overwritten only if an earlier ``scores.csv`` of predict in that folder lists it (or is it).
Predict never reads its own outputs: the overlays listed in a folder's ``scores.csv`` are not inputs.

With a calibration (:class:`zsadlab.calibration.Calibration`) two columns are added, ``anomalous``
(``true``/``false``: score above the image threshold; empty on skipped rows) and ``threshold``,
scores and thresholds written at full precision (``repr``) so the CSV itself shows each decision;
each overlay outlines the pixels above the pixel threshold.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .. import viz
from ..data import DatasetError
from ..data.dataset import image_tensor
from ..data.images import image_files, is_image_file
from ..errors import InputError
from ..methods import Method
from ..utils import check_writable, write_text_atomic
from .building import autocast, device_of, input_normalisation, method_of, precision_of, registered_method

SCORE_COLUMNS = ("path", "score", "overlay", "status")
DECISION_COLUMNS = ("anomalous", "threshold")


SCORES_FILE = "scores.csv"


def earlier_outputs(folder: Path) -> set[str]:
    """File names in ``folder`` that an earlier predict run wrote: its ``scores.csv`` (recognised by
    its header) and the overlays that file lists; empty when there is none."""
    try:
        with (folder / SCORES_FILE).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ())[:len(SCORE_COLUMNS)] != SCORE_COLUMNS:
                return set()
            return {SCORES_FILE} | {row["overlay"] for row in reader if row.get("overlay")}
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()


def user_images(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (not recursively) in the folders given (or the one path
    given), each once; a folder's overlays from an earlier predict run (:func:`earlier_outputs`) are not inputs."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            ours = earlier_outputs(item)
            found += [path for path in image_files(item) if path.name not in ours]
        elif is_image_file(item):
            found.append(item)
        else:
            raise InputError(f"{item} is neither an image file nor a folder of images "
                             "(.png, .jpg, .jpeg, .bmp, .tif)")
    if not found:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    return list({path.resolve(): path for path in found}.values())


def overlay_names(paths: Sequence[Path]) -> list[str]:
    """A distinct overlay file name per path, deterministic: ``<stem>_overlay.png``, with the suffix
    (``x_png``) and then the parent folder (``a_x_png``) added only where names would collide."""
    tiers = [[p.stem for p in paths], [f"{p.stem}_{p.suffix.lstrip('.')}" for p in paths],
             [f"{p.parent.name}_{p.stem}_{p.suffix.lstrip('.')}" for p in paths]]
    counts = [Counter(tier) for tier in tiers]
    chosen = [next((tier[i] for tier, count in zip(tiers, counts) if count[tier[i]] == 1), tiers[-1][i])
              for i in range(len(paths))]
    seen: Counter = Counter()
    names = []
    for name in chosen:  # last resort (e.g. a/c/x.png and b/c/x.png): a running number
        seen[name] += 1
        names.append(f"{name}_overlay.png" if seen[name] == 1 else f"{name}_{seen[name]}_overlay.png")
    return names


def check_outputs(paths: Sequence[Path], out_dir: str | Path) -> Path:
    """``out_dir`` (created, writable) if writing there can replace nothing the user owns, else one
    :class:`InputError` line: it may not hold an input image, and a file that would be written
    (``scores.csv``, an overlay) may exist only if an earlier predict run wrote it."""
    out_dir = check_writable(Path(out_dir).resolve())  # relative to the caller's working directory
    inside = next((p for p in paths if p.resolve().parent == out_dir), None)
    if inside is not None:
        raise InputError(f"--out {out_dir} holds the input image {inside}: predictions there could replace your files "
                         f"and be read as inputs next time. Choose another --out folder (e.g. {out_dir / 'predictions'}).")
    ours = earlier_outputs(out_dir)
    clash = next((n for n in [SCORES_FILE, *overlay_names(paths)] if (out_dir / n).exists() and n not in ours), None)
    if clash is not None:
        raise InputError(f"--out {out_dir} already holds {clash}, which predict did not write; it would be replaced. "
                         "Choose another --out folder, or move that file away.")
    return out_dir


def model_input(model, path: Path) -> torch.Tensor:
    """The image at ``path`` as the model's normalised input ``[3, S, S]``, through its method's
    official test transform (``Method.resize``)."""
    norm = input_normalisation(model)
    return image_tensor(path, model.config.image_size, method_of(model).resize, norm["mean"], norm["std"])


def check_prompts(spec: Method, prompts: Sequence[str | Path] | None) -> None:
    """Refuse reference images for a zero-shot method, and their absence for a few-shot one."""
    if spec.few_shot and prompts is None:
        raise InputError(f"{spec.name} is few-shot: pass normal reference images with prompts=[...] (--prompts DIR)")
    if not spec.few_shot and prompts is not None:
        raise InputError(f"{spec.name} is zero-shot and takes no reference images: leave out prompts (--prompts)")


def predictor_for(model, class_name: str, prompts: Sequence[str | Path] | None):
    """The model itself, or for a few-shot method the model with the normal reference images ``prompts``."""
    spec = method_of(model)
    check_prompts(spec, prompts)
    if prompts is None:
        return model
    return spec.with_prompts(model, {class_name: torch.stack([model_input(model, p) for p in user_images(prompts)])})


def scores_csv(rows: Sequence[dict], columns: Sequence[str] = SCORE_COLUMNS) -> str:
    """``scores.csv``'s text: a header and one row per input (any file name round-trips through ``csv``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def check_set_size(spec: Method | None, count: int, where: str) -> None:
    """One line when a transductive method gets fewer images than it needs to score them as a set."""
    if spec is not None and spec.transductive and count < spec.min_images:
        raise InputError(f"{spec.name} scores the images as one set and needs at least {spec.min_images} images; "
                         f"{where} has {count}. Add images of the same kind of object to the folder")


def scored_groups(spec: Method | None, paths: Sequence[Path]) -> list[list[Path]]:
    """The images scored together: one at a time, or all as one set for a transductive method."""
    return [list(paths)] if spec is not None and spec.transductive else [[path] for path in paths]


def decision_columns(score: float, calibration) -> dict:
    """The ``anomalous`` and ``threshold`` cells of a scored row, and its score at full precision."""
    return {"score": repr(score), "anomalous": str(calibration.decision(score)).lower(),
            "threshold": repr(calibration.image_threshold)}


def overlay_title(path: Path, score: float, calibration) -> str:
    """The file name, and with a calibration the decision and its image threshold."""
    if calibration is None:
        return path.name
    verdict = "anomalous" if calibration.decision(score) else "normal"
    return f"{path.name}: {verdict} (image threshold {calibration.image_threshold:.3g}, α = {calibration.alpha:g})"


def predict_images(model, inputs: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | Path,
                   class_name: str = "object", prompts: str | os.PathLike | Sequence[str | Path] | None = None,
                   amp: bool | None = None, calibration=None) -> dict:
    """Score the user's own images: ``scores.csv`` (path, score, overlay, status) and one overlay PNG per
    image in ``out_dir`` (none for a model without maps). ``inputs``: image files and folders, or one
    path. Few-shot methods need ``prompts``: normal images (files or a folder) of the same kind of
    object; a transductive method scores the readable images as one set (at least its ``min_images``).
    An unreadable image is skipped, with its reason in its row. At the method's precision (``amp``
    overrides it on CUDA). ``calibration`` (a :class:`zsadlab.calibration.Calibration` of this model,
    class and prompts, else refused) adds the decision columns. Returns ``{"csv", "overlays", "skipped"}``."""
    paths = user_images(inputs)
    if calibration is not None:
        calibration.check_model(model, class_name, prompts)
    out_dir = check_outputs(paths, out_dir)
    predictor = predictor_for(model, class_name, prompts).eval()
    spec, device = registered_method(model), device_of(model)
    precision = precision_of(model, device, amp)
    rows, overlays, names = {}, [], dict(zip(paths, overlay_names(paths)))
    for group in tqdm(scored_groups(spec, paths), desc="predict", leave=False):
        images = {}
        for path in group:
            try:
                images[path] = model_input(model, path)
            except DatasetError as err:
                rows[path] = {"path": str(path), "score": "", "overlay": "", "status": f"skipped: {err}"}
        if not images:
            continue
        check_set_size(spec, len(images), f"the readable images among the {len(paths)} given")
        with torch.no_grad(), autocast(precision, device):
            scores, maps = predictor.predict(torch.stack(list(images.values())).to(device), [class_name] * len(images))
        for i, (path, image) in enumerate(images.items()):
            score = float(scores[i])
            if maps is not None:
                fig = viz.plot_overlay(image, maps[i].float().cpu(), title=overlay_title(path, score, calibration),
                                       score=score, threshold=getattr(calibration, "pixel_threshold", None))
                overlays.append(viz.save_figure(fig, out_dir, names[path]))
                viz.plt.close(fig)
            rows[path] = {"path": str(path), "score": f"{score:.6f}", "overlay": names[path] if maps is not None else "",
                          "status": "ok", **(decision_columns(score, calibration) if calibration is not None else {})}
    rows = [rows[path] for path in paths]
    skipped = [row["path"] for row in rows if row["status"] != "ok"]
    if len(skipped) == len(rows):
        raise InputError(f"none of the {len(rows)} images could be read; first: {rows[0]['status']}")
    columns = SCORE_COLUMNS + (DECISION_COLUMNS if calibration is not None else ())
    csv_path = write_text_atomic(scores_csv(rows, columns), out_dir / SCORES_FILE)
    return {"csv": csv_path, "overlays": overlays, "skipped": skipped}
