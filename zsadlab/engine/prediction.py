"""Scoring the user's own images: ``scores.csv`` and one overlay PNG per image."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .. import viz
from ..data.dataset import normalised_tensor, resized_rgb
from ..data.images import image_files, is_image_file, load_rgb
from ..errors import InputError
from ..utils import write_text_atomic
from .building import device_of, input_normalisation, method_of


def user_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (not recursively) in the folders given."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += image_files(item)
        elif is_image_file(item):
            found.append(item)
        else:
            raise InputError(f"{item} is neither an image file nor a folder of images "
                             "(.png, .jpg, .jpeg, .bmp, .tif)")
    if not found:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def model_input(model, path: Path) -> torch.Tensor:
    """The image at ``path`` as the model's normalised input ``[3, S, S]``."""
    norm = input_normalisation(model)
    return normalised_tensor(resized_rgb(load_rgb(path), model.config.image_size), norm["mean"], norm["std"])


def predictor_for(model, class_name: str, prompts: Sequence[str | Path] | None):
    """The model itself, or for a few-shot method the model with the normal reference images ``prompts``."""
    spec = method_of(model)
    if spec.few_shot and prompts is None:
        raise InputError(f"{spec.name} is few-shot: pass normal reference images with prompts=[...] (--prompts DIR)")
    if not spec.few_shot and prompts is not None:
        raise InputError(f"{spec.name} is zero-shot and takes no reference images: leave out prompts (--prompts)")
    if prompts is None:
        return model
    return spec.with_prompts(model, {class_name: torch.stack([model_input(model, p) for p in user_images(prompts)])})


def predict_images(model, inputs: Sequence[str | Path], out_dir: str | Path, class_name: str = "object",
                   prompts: Sequence[str | Path] | None = None) -> dict:
    """Score the user's own images: ``scores.csv`` (path, score) and one overlay PNG per image in ``out_dir``
    (none for a model without maps). Few-shot methods need ``prompts``: normal images (files or a
    folder) of the same kind of object."""
    paths = user_images(inputs)
    predictor = predictor_for(model, class_name, prompts).eval()
    out_dir = Path(out_dir).resolve()  # relative to the caller's working directory
    device = device_of(model)
    rows, overlays = [], []
    for path in tqdm(paths, desc="predict", leave=False):
        image = model_input(model, path)
        score, amap = predictor.predict(image[None].to(device), [class_name])
        if amap is not None:
            fig = viz.plot_overlay(image, amap[0].cpu(), title=f"{path.name}", score=float(score[0]))
            overlays.append(viz.save_figure(fig, out_dir, f"{path.stem}_overlay"))
            viz.plt.close(fig)
        rows.append(f"{path},{float(score[0]):.6f}")
    csv_path = write_text_atomic("path,score\n" + "\n".join(rows) + "\n", out_dir / "scores.csv")
    return {"csv": csv_path, "overlays": overlays}
