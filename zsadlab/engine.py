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
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics
from .anomalyclip import AnomalyCLIP, AnomalyCLIPConfig, PRESETS, preset_config, save_official_checkpoint
from .backbone import preprocess_config
from .data import AnomalyDataset, collate
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
            return AnomalyCLIP(clip, anomalyclip_config(profile, preset, **changes)).to(device)
    return build


def _inctrl_builder(profile: Profile, device, seed: int, **changes):
    from .inctrl import InCTRL, InCTRLConfig  # method module, same layer as anomalyclip

    clip = profile.inctrl_backbone.build(device, seed=seed)
    config = InCTRLConfig(layers=profile.inctrl_layers, image_size=profile.inctrl_image_size, **changes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return InCTRL(clip, config).to(device)


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
