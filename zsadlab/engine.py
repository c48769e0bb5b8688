"""Training and evaluation loops shared by every method: progress bars, checkpoints, result tables.

* :func:`build_model` - a method (AnomalyCLIP, its baselines, InCTRL) on the profile's backbone;
* :func:`train` - the official AnomalyCLIP recipe (Adam lr 1e-3, betas (0.5, 0.999), seed 111),
  AMP on CUDA, one atomic checkpoint per epoch in the official format plus a resume state;
* :func:`predict_dataset` / :func:`evaluate` - scores and maps over a dataset, and the per-class
  table (image AUROC/AP, pixel AUROC/AP, AUPRO both ways) with its mean.

Methods are looked up in :data:`BUILDERS` (a registry, not an if-chain).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import fewshot, inctrl, metrics, viz
from .anomalyclip import (
    PRESETS,
    AnomalyCLIP,
    AnomalyCLIPConfig,
    load_official_checkpoint,
    preset_config,
    save_official_checkpoint,
)
from .backbone import preprocess_config
from .data import AnomalyDataset, DatasetError, collate
from .data.dataset import normalised_tensor, resized_rgb
from .data.images import image_files, is_image_file, load_rgb
from .inctrl import InCTRL, InCTRLConfig
from .profiles import Profile
from .utils import load_torch_file, pick_device, save_torch_atomic, seed_everything, write_json_atomic, write_text_atomic

OFFICIAL_LR = 1e-3
OFFICIAL_BETAS = (0.5, 0.999)
OFFICIAL_SEED = 111
RESUME_FILE = "train_state.pt"


# --- building ---------------------------------------------------------------------------


def anomalyclip_config(profile: Profile, preset: str = "anomalyclip", **changes) -> AnomalyCLIPConfig:
    """The preset's config at the profile's backbone size, with ``changes`` applied last."""
    base = AnomalyCLIPConfig(
        features=profile.anomalyclip_features,
        dpam_blocks=profile.anomalyclip_dpam_blocks,
        image_size=profile.anomalyclip_image_size,
    )
    return preset_config(preset, base).replace(**changes)


def _anomalyclip_builder(preset: str) -> Callable:
    def build(profile: Profile, device, seed: int, **changes):
        clip = profile.anomalyclip_backbone.build(device, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AnomalyCLIP(clip, anomalyclip_config(profile, preset, **changes)).to(device).eval()
    return build


def _inctrl_builder(profile: Profile, device, seed: int, **changes):
    clip = profile.inctrl_backbone.build(device, seed=seed)
    config = InCTRLConfig(layers=profile.inctrl_layers, image_size=profile.inctrl_image_size,
                          epochs=profile.inctrl_epochs, batch_size=profile.inctrl_batch_size,
                          steps_per_epoch=profile.inctrl_steps_per_epoch)
    config = dataclasses.replace(config, **changes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return InCTRL(clip, config).to(device).eval()


BUILDERS: dict[str, Callable] = {name: _anomalyclip_builder(name) for name in PRESETS}
BUILDERS["inctrl"] = _inctrl_builder


def build_model(method: str, profile: Profile, device=None, seed: int = 0, **config_changes):
    """The model of ``method`` (a key of :data:`BUILDERS`) on ``profile``'s backbone, on ``device``."""
    if method not in BUILDERS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[method](profile, pick_device(device), seed, **config_changes)


def dataset_for(model, root, split: str = "test", classes: Sequence[str] | None = None,
                require_masks: bool = False) -> AnomalyDataset:
    """An :class:`AnomalyDataset` at the model's image size and its CLIP normalisation."""
    norm = preprocess_config(model.clip)
    return AnomalyDataset(root, split=split, classes=classes, image_size=model.config.image_size,
                          mean=norm["mean"], std=norm["std"], require_masks=require_masks)


# --- training ---------------------------------------------------------------------------


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _resume_state(out_dir: Path | None, model, optimizer) -> tuple[int, dict]:
    """Load ``train_state.pt`` if present: returns (epochs done, history)."""
    path = out_dir / RESUME_FILE if out_dir else None
    if path is None or not path.exists():
        return 0, {}
    state = load_torch_file(path, what="training state")
    model.prompt_learner.load_state_dict(state["prompt_learner"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), {k: list(v) for k, v in state["history"].items()}


def train(model: AnomalyCLIP, dataset: AnomalyDataset, epochs: int = 15, batch_size: int = 8,
          lr: float = OFFICIAL_LR, betas: tuple[float, float] = OFFICIAL_BETAS, out_dir: str | Path | None = None,
          resume: bool = True, seed: int = OFFICIAL_SEED, device=None, amp: bool | None = None,
          max_steps_per_epoch: int | None = None, progress: bool = True) -> dict[str, list[float]]:
    """Train the prompt learner as the official ``train.py`` (SPEC §2) and return the loss history.

    History keys: ``total``, ``image``, ``pixel`` (one value per step) and ``epoch_total``
    (mean per epoch). With ``out_dir``, each epoch writes ``epoch_<n>.pth`` (official
    ``{"prompt_learner": ...}`` format) and ``train_state.pt`` (optimizer + history)
    atomically; ``resume=True`` continues after the last completed epoch.
    AMP (fp16 autocast + GradScaler) is used on CUDA unless ``amp=False``.
    """
    if not any(p.requires_grad for p in model.prompt_learner.parameters()):
        raise ValueError("this model has nothing to train: its text comes from the hand-written prompt ensemble "
                         "(the clip / clip_ac baselines are zero-shot); train 'anomalyclip' or 'coop' instead")
    device = pick_device(device) if device is not None else _device_of(model)
    model.to(device).train()
    out_dir = Path(out_dir) if out_dir else None
    optimizer = torch.optim.Adam(model.prompt_learner.parameters(), lr=lr, betas=betas)
    done, history = _resume_state(out_dir, model, optimizer) if resume else (0, {})
    history = {k: history.get(k, []) for k in ("total", "image", "pixel", "epoch_total")}
    use_amp = (device.type == "cuda") if amp is None else (amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    for epoch in range(done, epochs):
        seed_everything(seed + epoch)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                            generator=torch.Generator().manual_seed(seed + epoch))
        steps = len(loader) if max_steps_per_epoch is None else min(len(loader), max_steps_per_epoch)
        epoch_losses = []
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            if step >= steps:
                break
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                losses = model.losses(batch["image"].to(device), batch["mask"].to(device),
                                      batch["label"].to(device), batch["class_name"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
            for key in ("total", "image", "pixel"):
                history[key].append(float(losses[key].detach()))
            epoch_losses.append(history["total"][-1])
            bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
        history["epoch_total"].append(float(np.mean(epoch_losses)))
        if out_dir:
            save_official_checkpoint(model, out_dir / f"epoch_{epoch + 1}.pth")
            save_torch_atomic({"epoch": epoch + 1, "prompt_learner": model.prompt_learner.state_dict(),
                               "optimizer": optimizer.state_dict(), "history": history}, out_dir / RESUME_FILE)
    model.eval()
    return history


# --- prediction and evaluation ------------------------------------------------------------


@torch.no_grad()
def predict_dataset(model, dataset: AnomalyDataset, batch_size: int = 8, device=None,
                    progress: bool = True) -> dict:
    """Scores and maps of every image: ``scores`` [N], ``maps`` [N, S, S] float32, ``masks`` [N, S, S]
    uint8, ``has_mask`` [N], ``labels`` [N], ``class_names``, ``paths`` (lists)."""
    device = pick_device(device) if device is not None else _device_of(model)
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    parts: dict[str, list] = {k: [] for k in ("scores", "maps", "masks", "has_mask", "labels", "class_names", "paths")}
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
        scores, maps = model.predict(batch["image"].to(device), batch["class_name"])
        parts["scores"].append(scores.float().cpu().numpy())
        parts["maps"].append(maps.float().cpu().numpy())
        parts["masks"].append(batch["mask"].numpy().astype(np.uint8))
        parts["has_mask"].append(batch["has_mask"].numpy())
        parts["labels"].append(batch["label"].numpy())
        parts["class_names"] += batch["class_name"]
        parts["paths"] += batch["path"]
    return {k: (np.concatenate(v) if k not in ("class_names", "paths") else v) for k, v in parts.items()}


METRIC_COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro_mvtec", "aupro_anomalyclip")


def _safe(metric: Callable, *args, **kwargs) -> float:
    """A metric value, or NaN where it is undefined (one class only, no masks)."""
    try:
        return float(metric(*args, **kwargs))
    except ValueError:
        return math.nan


def class_metrics(pred: dict) -> dict[str, float]:
    """The table's metrics for one set of predictions (image-level and, where masks exist, pixel-level)."""
    scores, labels = pred["scores"], pred["labels"]
    row = {"image_auroc": _safe(metrics.image_auroc, scores, labels),
           "image_ap": _safe(metrics.image_ap, scores, labels)}
    pixel = pred["has_mask"].astype(bool)
    maps, masks = pred["maps"][pixel], pred["masks"][pixel]
    row["pixel_auroc"] = _safe(metrics.pixel_auroc, maps, masks) if pixel.any() else math.nan
    row["pixel_ap"] = _safe(metrics.pixel_ap, maps, masks) if pixel.any() else math.nan
    for method in ("mvtec", "anomalyclip"):
        row[f"aupro_{method}"] = _safe(metrics.aupro, maps, masks, method=method) if pixel.any() else math.nan
    return row


@dataclass
class ResultTable:
    """Per-class results plus their mean: prints as a table, saves as CSV or JSON (no pandas)."""

    rows: list[dict] = field(default_factory=list)  # each {"class": name, metric: value, ...}
    columns: tuple[str, ...] = METRIC_COLUMNS

    @property
    def mean(self) -> dict:
        """The mean over classes of each column, ignoring undefined (NaN) entries."""
        means = {}
        for col in self.columns:
            values = [r[col] for r in self.rows if not math.isnan(r[col])]
            means[col] = float(np.mean(values)) if values else math.nan
        return {"class": "mean", **means}

    def __str__(self) -> str:
        header = ["class", *self.columns]
        lines = [header] + [[r["class"]] + [f"{100 * r[c]:.1f}" if not math.isnan(r[c]) else "-" for c in self.columns]
                            for r in [*self.rows, self.mean]]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)

    def _repr_html_(self) -> str:
        return "<pre>" + str(self) + "</pre>"

    def to_csv(self, path: str | Path) -> Path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["class", *self.columns])
        writer.writeheader()
        writer.writerows([*self.rows, self.mean])
        return write_text_atomic(buffer.getvalue(), path)

    def to_json(self, path: str | Path) -> Path:
        return write_json_atomic({"rows": self.rows, "mean": self.mean}, path)


def evaluate(model, dataset: AnomalyDataset, batch_size: int = 8, device=None, progress: bool = True) -> ResultTable:
    """Per-class table over ``dataset`` (official protocol: metrics per class, then the mean)."""
    table = ResultTable()
    for class_name in tqdm(dataset.classes, desc="classes", disable=not progress, leave=False):
        pred = predict_dataset(model, dataset.subset(class_name), batch_size, device, progress=False)
        table.rows.append({"class": class_name, **class_metrics(pred)})
    return table


# --- few-shot (InCTRL) ----------------------------------------------------------------------


def _stack_images(dataset: AnomalyDataset, indices) -> torch.Tensor:
    return torch.stack([dataset[int(i)]["image"] for i in indices])  # [n, 3, S, S]


def train_inctrl(model, dataset: AnomalyDataset, epochs: int | None = None, steps_per_epoch: int | None = None,
                 batch_size: int | None = None, shots: int | None = None, out_dir: str | Path | None = None,
                 resume: bool = True, seed: int = 0, device=None, progress: bool = True) -> dict[str, list[float]]:
    """Train InCTRL's adapter and heads as the official ``engine_IC.train_epoch`` (fixtures/inctrl §3.9).

    Balanced batches (half normal, half anomalous), each query with ``shots`` normal prompts of its
    class drawn from ``dataset`` (seeded, never the query itself), AdamW. Unset arguments take the
    model config's official values. With ``out_dir``: ``checkpoint.pt`` (official layout) and
    ``train_state.pt`` (heads, optimizer, history) are written atomically after every epoch;
    ``resume=True`` continues after the last completed epoch.
    """
    cfg = model.config
    epochs, steps = epochs or cfg.epochs, steps_per_epoch or cfg.steps_per_epoch
    batch_size, shots = batch_size or cfg.batch_size, shots or cfg.shots
    device = pick_device(device) if device is not None else _device_of(model)
    model.to(device)
    optimizer = inctrl.make_optimizer(model)
    out_dir = Path(out_dir) if out_dir else None
    done, history = 0, {"total": [], "epoch_total": []}
    state_path = out_dir / RESUME_FILE if out_dir else None
    if resume and state_path and state_path.exists():
        state = load_torch_file(state_path, what="training state")
        model.load_state_dict(state["heads"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        done, history = int(state["epoch"]), {k: list(v) for k, v in state["history"].items()}
    labels = [s.label for s in dataset.samples]
    names = [s.class_name for s in dataset.samples]
    for epoch in range(done, epochs):
        rng = np.random.default_rng(seed + epoch)
        seed_everything(seed + epoch)
        losses = []
        for batch in tqdm(fewshot.balanced_batches(labels, batch_size, steps, rng), desc=f"epoch {epoch + 1}/{epochs}",
                          disable=not progress, leave=False):
            prompt_index = fewshot.sample_prompt_indices(batch, labels, names, shots, rng)  # [B, K]
            queries = _stack_images(dataset, batch).to(device)  # [B, 3, S, S]
            prompts = _stack_images(dataset, prompt_index.reshape(-1)).unflatten(0, prompt_index.shape)
            label = torch.tensor([labels[i] for i in batch], device=device)
            losses.append(inctrl.train_step(model, optimizer, queries, prompts.to(device), [names[i] for i in batch],
                                     label)["loss"])
        history["total"] += losses
        history["epoch_total"].append(float(np.mean(losses)))
        if out_dir:
            inctrl.save_checkpoint(model, out_dir / "checkpoint.pt", epoch=epoch + 1)
            heads = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
            save_torch_atomic({"epoch": epoch + 1, "heads": heads, "optimizer": optimizer.state_dict(),
                               "history": history}, state_path)
    model.eval()
    return history


class FewShotPredictor(torch.nn.Module):
    """InCTRL with one fixed prompt set per class, behind the engine's ``predict`` interface.

    ``predict(x, class_names)`` returns InCTRL's final score and its patch residual map,
    bilinearly upsampled to the image size for pictures (InCTRL reports no pixel metrics).
    """

    def __init__(self, model, prompts: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.config, self.clip = model, model.config, model.clip
        with torch.no_grad():
            self.prompt_features = {name: model.prompt_features(p.to(_device_of(model))) for name, p in prompts.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.empty(x.shape[0], device=x.device)
        maps = torch.empty(x.shape[0], x.shape[-2], x.shape[-1], device=x.device)
        for name in dict.fromkeys(class_names):
            rows = torch.tensor([i for i, n in enumerate(class_names) if n == name], device=x.device)
            out = self.model(x[rows], self.prompt_features[name], name)
            grid = int(round(out.patch_map.shape[1] ** 0.5))
            patch = out.patch_map.view(-1, 1, grid, grid)
            maps[rows] = torch.nn.functional.interpolate(patch, size=x.shape[-2:], mode="bilinear",
                                                         align_corners=False)[:, 0]
            scores[rows] = out.final_score
        return scores, maps


def fewshot_prompts(support: AnomalyDataset, class_name: str, shots: int, seed: int,
                    prompt_dir: str | Path, dataset_name: str) -> tuple[torch.Tensor, list[Path]]:
    """Normal prompt images ``[K, 3, S, S]`` of a class and their paths, from the saved prompt set of
    (dataset, class, k, seed) (sampled from ``support``'s normal images of the class the first time)."""
    by_path = {str(s.path.relative_to(support.root)): i for i, s in enumerate(support.samples)
               if s.class_name == class_name and s.label == 0}
    paths = fewshot.load_or_sample_prompt_set(prompt_dir, dataset_name, class_name, shots, seed, sorted(by_path))
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise ValueError(f"prompt set for {dataset_name}/{class_name} names images not in {support.root}: "
                         f"{missing[:3]}; delete {prompt_dir} to resample")
    return _stack_images(support, [by_path[p] for p in paths]), [support.root / p for p in paths]


FEWSHOT_COLUMNS = ("image_auroc", "image_auroc_std", "image_ap", "image_ap_std")


def evaluate_fewshot(model, dataset: AnomalyDataset, support: AnomalyDataset | None = None, shots: int = 4,
                     seeds: Sequence[int] = (0,), prompt_dir: str | Path = "runs/prompts",
                     dataset_name: str | None = None, batch_size: int = 8, progress: bool = True) -> ResultTable:
    """Few-shot table: per class, image AUROC/AP as the mean (and std) over prompt-sampling seeds.

    For each (class, seed) one set of ``shots`` normal images is drawn from ``support`` (the
    class's normal training images), saved under ``prompt_dir`` and reused by later runs, and
    shared by every test query of the class - the official test protocol (fixtures/inctrl §3.10-11).
    Datasets without a training split (``support=None``) lend the prompts from their own normal test
    images, which are then left out of the evaluated queries.
    """
    dataset_name = dataset_name or Path(dataset.root).name
    table = ResultTable(columns=FEWSHOT_COLUMNS)
    for class_name in tqdm(dataset.classes, desc=f"{shots}-shot classes", disable=not progress, leave=False):
        per_seed = []
        for seed in seeds:
            prompts, paths = fewshot_prompts(support or dataset, class_name, shots, seed, prompt_dir, dataset_name)
            queries = dataset.subset(class_name).excluding(paths if support is None else [])
            pred = predict_dataset(FewShotPredictor(model, {class_name: prompts}), queries, batch_size, progress=False)
            per_seed.append((_safe(metrics.image_auroc, pred["scores"], pred["labels"]),
                             _safe(metrics.image_ap, pred["scores"], pred["labels"])))
        auroc, ap = np.array(per_seed).T
        table.rows.append({"class": class_name, "image_auroc": float(auroc.mean()), "image_auroc_std": float(auroc.std()),
                           "image_ap": float(ap.mean()), "image_ap_std": float(ap.std())})
    return table


# --- one entry point per task, whatever the method (used by the CLI) --------------------------------


def _fit_anomalyclip(model, root, epochs, batch_size, out_dir, seed, shots):
    data = dataset_for(model, root, require_masks=True)  # official: the auxiliary set's test split, with masks
    return train(model, data, epochs=epochs or 15, batch_size=batch_size or 8, out_dir=out_dir,
                 seed=OFFICIAL_SEED if seed is None else seed)


def _fit_inctrl(model, root, epochs, batch_size, out_dir, seed, shots):
    return train_inctrl(model, dataset_for(model, root), epochs=epochs, batch_size=batch_size, shots=shots,
                        out_dir=out_dir, seed=seed or 0)


def _test_anomalyclip(model, root, shots, seeds, out_dir):
    return evaluate(model, dataset_for(model, root))


def _test_inctrl(model, root, shots, seeds, out_dir):
    prompt_dir = Path(out_dir or "runs") / "prompts"
    try:
        support = dataset_for(model, root, split="train")
    except DatasetError:  # no training split: the prompts come from the test split's normal images
        support = None
    return evaluate_fewshot(model, dataset_for(model, root), support, shots=shots, seeds=seeds, prompt_dir=prompt_dir)


# Registries keyed by the model's class: what "train", "test" and "load" mean for each method.
FITTERS = {AnomalyCLIP: _fit_anomalyclip, InCTRL: _fit_inctrl}
TESTERS = {AnomalyCLIP: _test_anomalyclip, InCTRL: _test_inctrl}
CHECKPOINT_LOADERS = {AnomalyCLIP: load_official_checkpoint, InCTRL: inctrl.load_checkpoint}


def _lookup(table: dict, model):
    return table[type(model)]


def fit(model, root, epochs: int | None = None, batch_size: int | None = None, out_dir=None,
        seed: int | None = None, shots: int | None = None) -> dict:
    """Train ``model`` (AnomalyCLIP or InCTRL) on the prepared dataset at ``root``; returns the loss history.

    ``None`` takes the method's official value (InCTRL: from its config, set by the profile).
    """
    return _lookup(FITTERS, model)(model, root, epochs, batch_size, out_dir, seed, shots)


def test(model, root, shots: int = 4, seeds: Sequence[int] = (0,), out_dir=None) -> ResultTable:
    """The method's evaluation protocol on ``root``: zero-shot table, or few-shot table over prompt seeds."""
    return _lookup(TESTERS, model)(model, root, shots, seeds, out_dir)


test.__test__ = False  # not a pytest test


def load_checkpoint(model, path):
    """Load an official-format checkpoint of the model's method (weights_only, clear errors)."""
    return _lookup(CHECKPOINT_LOADERS, model)(model, path)


def _user_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (not recursively) in the folders given."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += image_files(item)
        elif is_image_file(item):
            found.append(item)
        else:
            raise ValueError(f"{item} is neither an image file nor a folder of images "
                             "(.png, .jpg, .jpeg, .bmp, .tif)")
    if not found:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def _transformed(model, path: Path) -> torch.Tensor:
    norm = preprocess_config(model.clip)
    return normalised_tensor(resized_rgb(load_rgb(path), model.config.image_size), norm["mean"], norm["std"])


def predict_images(model, inputs: Sequence[str | Path], out_dir: str | Path, class_name: str = "object",
                   prompts: Sequence[str | Path] | None = None) -> dict:
    """Score the user's own images: ``scores.csv`` (path, score) and one overlay PNG per image in ``out_dir``.

    InCTRL needs ``prompts``: normal images (files or a folder) of the same kind of object.
    """
    paths = _user_images(inputs)
    if prompts is not None:
        prompt_images = torch.stack([_transformed(model, p) for p in _user_images(prompts)])
        predictor = FewShotPredictor(model, {class_name: prompt_images})
    elif hasattr(model, "prompt_learner"):
        predictor = model
    else:
        raise ValueError("this method is few-shot: pass normal reference images with prompts=[...] (--prompts DIR)")
    predictor.eval()
    out_dir = Path(out_dir).resolve()  # relative to the caller's working directory
    device = _device_of(model)
    rows, overlays = [], []
    for path in tqdm(paths, desc="predict", leave=False):
        image = _transformed(model, path)
        score, amap = predictor.predict(image[None].to(device), [class_name])
        fig = viz.plot_overlay(image, amap[0].cpu(), title=f"{path.name}", score=float(score[0]))
        overlays.append(viz.save_figure(fig, out_dir, f"{path.stem}_overlay"))
        viz.plt.close(fig)
        rows.append(f"{path},{float(score[0]):.6f}")
    csv_path = write_text_atomic("path,score\n" + "\n".join(rows) + "\n", out_dir / "scores.csv")
    return {"csv": csv_path, "overlays": overlays}
