"""Plotting helpers for the notebooks: overlays, grids, attention, curves, bars, losses.

One style for everything (:func:`set_style`, seaborn); every helper gives a title and
labelled axes, adds a colourbar to every anomaly map, and *returns the Figure* (it
never calls ``plt.show``). :func:`save_figure` writes it as PNG.

Also here: :func:`repo_root` and :func:`resolve_path`, so notebooks can use paths
relative to the repository whatever their working directory is (papermill runs a
kernel in ``notebooks/``, nbval in ``tests/notebooks/baselines/``).

Images may be given as ``[3, H, W]`` normalised tensors (as :class:`zsadlab.data`
returns them: pass ``mean``/``std`` or rely on the OpenAI CLIP defaults), or as
``[H, W, 3]`` / ``[H, W]`` arrays in ``uint8`` or ``[0, 1]`` floats.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .utils import atomic_path

OPENAI_MEAN, OPENAI_STD = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # the images' normalisation (CLIP)
MAP_CMAP = "jet"  # the papers' anomaly-map colours
ATTENTION_CMAP = "viridis"
_BUDGET_NOTE = {"note": ""}  # what set_budget_note set: appended to the titles of result tables and figures

__all__ = [
    "set_style", "set_budget_note", "repo_root", "resolve_path", "figure_path", "show", "to_rgb", "to_numpy", "save_figure",
    "plot_overlay", "plot_sample_grid", "plot_map_grid", "plot_attention", "plot_attention_rows",
    "plot_roc_curves", "plot_pro_curves", "plot_bars", "plot_comparison", "plot_loss_curves", "plot_k_shot", "plot_confusion_matrix",
    "plot_thresholds",
    "plot_score_histogram", "format_table", "print_table", "defect_patch",
]


# ----------------------------------------------------------------------------- style and paths
def set_style(context: str = "notebook", dpi: int = 100) -> None:
    """The one seaborn style of the series (white grid, colour-blind palette)."""
    sns.set_theme(context=context, style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "savefig.bbox": "tight",
                         "axes.titleweight": "bold", "image.interpolation": "nearest"})


def set_budget_note(note: str) -> None:
    """From now on every result table (:func:`print_table`) and result figure (:func:`plot_comparison`,
    :func:`plot_bars`, :func:`plot_k_shot`) says ``note`` in its title ("": nothing) - the budget of a
    budgeted run (``zsadlab.notebook.start`` sets it from the session's ``budget_note``)."""
    _BUDGET_NOTE["note"] = note


def _noted(title: str) -> str:
    """``title`` with the budget note (:func:`set_budget_note`) on a line of its own, if there is one."""
    return f"{title}\n[{_BUDGET_NOTE['note']}]" if _BUDGET_NOTE["note"] and title else title


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The zsadlab checkout: the first folder at or above ``start`` (default: cwd) holding
    ``pyproject.toml`` and ``zsadlab/``; else the folder above the installed package."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "zsadlab").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def resolve_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """``path`` if absolute, else relative to :func:`repo_root` (so notebooks never bake
    absolute paths into their parameters)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (Path(root) if root else repo_root()) / path


def figure_path(output_dir: str | os.PathLike, name: str) -> Path:
    """Where :func:`save_figure` writes ``name``: ``<output_dir>/<name>.png`` (relative: from the repo root)."""
    return resolve_path(output_dir) / (name if name.endswith(".png") else name + ".png")


def save_figure(fig: plt.Figure, output_dir: str | os.PathLike | None, name: str) -> Path | None:
    """Write ``fig`` as PNG to :func:`figure_path`; returns that path (``None`` when ``output_dir``
    is ``None``/empty: nothing is written)."""
    if not output_dir:
        return None
    path = figure_path(output_dir, name)
    with atomic_path(path) as tmp:  # never a half-written PNG
        fig.savefig(tmp, format="png")
    return path


SMOKE_LABEL = "SMOKE - pipeline check, not a result"


class _SmokeFigures:
    """Whether :func:`show` labels figures as a smoke run; set by :func:`label_smoke_figures` (the
    notebooks' ``start`` does it from the profile), off by default."""

    enabled = False


DATA_FIGURE = "zsadlab: data"  # the label of a figure that shows a dataset's images and masks, not a result


def label_smoke_figures(enabled: bool) -> None:
    """From now on, :func:`show` marks every figure with :data:`SMOKE_LABEL` (a faint diagonal
    watermark) when ``enabled``: numbers from tiny random CLIPs must never look like results. Figures of
    a dataset's images and masks (:func:`plot_sample_grid`) show data, not results, and stay unmarked."""
    _SmokeFigures.enabled = bool(enabled)


def smoke_labelled(fig: plt.Figure) -> plt.Figure:
    """``fig`` with the smoke watermark across it."""
    fig.text(0.5, 0.5, SMOKE_LABEL.replace(" - ", "\n"), transform=fig.transFigure, ha="center", va="center",
             rotation=20, fontsize=26, color="red", alpha=0.2, zorder=100)
    return fig


def show(fig: plt.Figure, output_dir: str | os.PathLike | None = None, name: str | None = None) -> None:
    """Save ``fig`` (when ``output_dir`` and ``name`` are given), display it once in a notebook and close it;
    in a smoke run (:func:`label_smoke_figures`) watermarked as a pipeline check first.

    Returns nothing, so a cell ending with it shows only the figure (nbval does not honour a
    trailing ``;``, so ``save_figure``'s return value would otherwise be displayed too).
    """
    if _SmokeFigures.enabled and fig.get_label() != DATA_FIGURE:
        smoke_labelled(fig)
    if output_dir and name:
        save_figure(fig, output_dir, name)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover
        return
    if get_ipython() is not None:
        display(fig)
        plt.close(fig)


# ----------------------------------------------------------------------------- conversions
def to_numpy(x) -> np.ndarray:
    """Tensor or array-like -> float numpy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def to_rgb(image, mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD) -> np.ndarray:
    """Any image (see module doc) -> ``[H, W, 3]`` float in [0, 1] for ``imshow``.

    A ``[3, H, W]`` *tensor* is taken as normalised (``x * std + mean`` undoes it).
    """
    normalised = isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] == 3
    arr = to_numpy(image)
    if normalised:
        arr = arr.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    elif arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype == np.uint8 or arr.max(initial=0) > 1.5:
        arr = arr.astype(np.float64) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.clip(arr, 0.0, 1.0)


def _image_axes(ax: plt.Axes, title: str | None = None, xlabel: str = "x [px]", ylabel: str = "y [px]") -> None:
    ax.set_title(title or "", fontsize="small" if title and len(title) > 16 else None)  # long titles must not collide
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(False)
    ax.tick_params(labelsize=7)


def _map_limits(maps: Sequence[np.ndarray], vmin, vmax) -> tuple[float, float]:
    if vmin is None:
        vmin = float(min(m.min() for m in maps))
    if vmax is None:
        vmax = float(max(m.max() for m in maps))
    return vmin, (vmax if vmax > vmin else vmin + 1e-6)


def _draw_mask_contour(ax: plt.Axes, mask, colour: str = "white") -> None:
    mask = to_numpy(mask)
    if mask is not None and mask.any():
        ax.contour(mask > 0.5, levels=[0.5], colors=colour, linewidths=1.0)


# ----------------------------------------------------------------------------- maps
def plot_overlay(image, anomaly_map, mask=None, title: str = "Anomaly map", alpha: float = 0.5,
                 vmin: float | None = None, vmax: float | None = None, score: float | None = None,
                 mean=OPENAI_MEAN, std=OPENAI_STD, cbar_label: str = "anomaly score",
                 threshold: float | None = None) -> plt.Figure:
    """Image | anomaly map over the image (+ ground-truth contour in white), with a colourbar; with a
    pixel ``threshold``, the region above it outlined in cyan and marked on the colourbar."""
    rgb, amap = to_rgb(image, mean, std), to_numpy(anomaly_map)
    vmin, vmax = _map_limits([amap], vmin, vmax)
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.6), constrained_layout=True)
    axes[0].imshow(rgb)
    _draw_mask_contour(axes[0], mask, "red")
    _image_axes(axes[0], "image" + (" (red: ground truth)" if mask is not None and to_numpy(mask).any() else ""))
    axes[1].imshow(rgb)
    im = axes[1].imshow(amap, cmap=MAP_CMAP, alpha=alpha, vmin=vmin, vmax=vmax)
    _draw_mask_contour(axes[1], mask)
    _image_axes(axes[1], "overlay" + (f" - image score {score:.2f}" if score is not None else "")
                + (" (cyan: above the pixel threshold)" if threshold is not None else ""))
    bar = fig.colorbar(im, ax=axes[1], fraction=0.046, label=cbar_label)
    if threshold is not None:
        _draw_mask_contour(axes[1], amap > threshold, "cyan")
        bar.ax.axhline(threshold, color="cyan", linewidth=2)
    fig.suptitle(title)
    return fig


def plot_sample_grid(images: Sequence, masks: Sequence | None = None, titles: Sequence[str] | None = None,
                     title: str = "Samples", mean=OPENAI_MEAN, std=OPENAI_STD) -> plt.Figure:
    """Images in the first row and their ground-truth masks in the second (if given)."""
    n = len(images)
    rows = 2 if masks is not None else 1
    fig, axes = plt.subplots(rows, n, figsize=(2.2 * n, 2.3 * rows + 0.4), squeeze=False, constrained_layout=True)
    for j in range(n):
        axes[0, j].imshow(to_rgb(images[j], mean, std))
        _image_axes(axes[0, j], titles[j] if titles else None, ylabel="image" if j == 0 else "",
                    xlabel="" if masks is not None else "x [px]")  # the mask row below carries the x label
        if masks is not None:
            mask = masks[j]
            shown = np.zeros(to_rgb(images[j], mean, std).shape[:2]) if mask is None else to_numpy(mask)
            axes[1, j].imshow(shown, cmap="gray", vmin=0, vmax=1)
            _image_axes(axes[1, j], "mask" if mask is not None else "no mask", ylabel="ground truth" if j == 0 else "")
    fig.suptitle(title)
    fig.set_label(DATA_FIGURE)
    return fig


def plot_map_grid(images: Sequence, maps: Mapping[str, Sequence], masks: Sequence | None = None,
                  titles: Sequence[str] | None = None, title: str = "Anomaly maps", alpha: float = 0.5,
                  vmin: float | None = None, vmax: float | None = None, mean=OPENAI_MEAN, std=OPENAI_STD,
                  cbar_label: str = "anomaly score") -> plt.Figure:
    """Rows: image (with the mask contour), then one overlay row per entry of ``maps``
    (``{"method": [map per image]}``), all on ONE colour scale with one labelled colourbar, so
    colours compare across rows and columns. ``vmin``/``vmax``: the scale (default: the range of
    every map in the grid; e.g. ``0, L`` for AnomalyCLIP maps summed over ``L`` feature layers)."""
    n = len(images)
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, n, figsize=(2.3 * n + 0.8, 2.2 * rows + 0.4), squeeze=False,
                             constrained_layout=True)
    rgbs = [to_rgb(im, mean, std) for im in images]
    arrays = {name: [to_numpy(m) for m in row_maps] for name, row_maps in maps.items()}
    lo, hi = _map_limits([a for row in arrays.values() for a in row], vmin, vmax)
    for j in range(n):
        axes[0, j].imshow(rgbs[j])
        if masks is not None and masks[j] is not None:
            _draw_mask_contour(axes[0, j], masks[j], "red")
        _image_axes(axes[0, j], titles[j] if titles else None, ylabel="image" if j == 0 else "")
    im = None
    for i, (name, row_maps) in enumerate(arrays.items(), start=1):
        for j in range(n):
            axes[i, j].imshow(rgbs[j])
            im = axes[i, j].imshow(row_maps[j], cmap=MAP_CMAP, alpha=alpha, vmin=lo, vmax=hi)
            if masks is not None and masks[j] is not None:
                _draw_mask_contour(axes[i, j], masks[j])
            _image_axes(axes[i, j], None, ylabel=name if j == 0 else "")
    if im is not None:
        fig.colorbar(im, ax=list(axes[1:].ravel()), fraction=0.02,
                     label=f"{cbar_label}\n(one scale: {lo:.2g} to {hi:.2g})")
    fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------- attention
def plot_attention(attentions: Mapping[str, "torch.Tensor | np.ndarray"], title: str = "Attention maps",
                   drop_cls: bool = True, log_scale: bool = False) -> plt.Figure:
    """Token-to-token attention matrices ``[N, N]`` side by side (``{"Q-K": A, "V-V": A}``), one
    colourbar each. A prominent diagonal = every token attends to itself (DPAM, paper §3.3)."""
    n = len(attentions)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False, constrained_layout=True)
    for ax, (name, attn) in zip(axes[0], attentions.items()):
        a = to_numpy(attn)
        if a.ndim == 3:
            a = a[0]
        if drop_cls:
            a = a[1:, 1:]
        shown = np.log10(a + 1e-6) if log_scale else a
        im = ax.imshow(shown, cmap=ATTENTION_CMAP)
        ax.set_title(f"{name}\n(diagonal share {np.trace(a) / a.sum():.2f})")
        ax.set_xlabel("key token")
        ax.set_ylabel("query token")
        ax.grid(False)
        fig.colorbar(im, ax=ax, fraction=0.046, label="log10 weight" if log_scale else "attention weight")
    fig.suptitle(title)
    return fig


def plot_attention_rows(image, attentions: Mapping[str, "torch.Tensor | np.ndarray"], query_patches: Sequence[int],
                        title: str = "Where does a patch look?", mean=OPENAI_MEAN, std=OPENAI_STD,
                        mask=None) -> plt.Figure:
    """For each query patch (row-major patch index) and each attention type, the attention row
    reshaped to the patch grid over the image; the query patch is marked with a white square
    (and the ground-truth ``mask``, if given, with a red contour)."""
    rgb = to_rgb(image, mean, std)
    names = list(attentions)
    rows, cols = len(query_patches), len(names) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 0.6, 2.4 * rows + 0.4), squeeze=False,
                             constrained_layout=True)
    for i, patch in enumerate(query_patches):
        axes[i, 0].imshow(rgb)
        first = to_numpy(attentions[names[0]])
        first = first[0] if first.ndim == 3 else first
        grid = int(round(np.sqrt(first.shape[-1] - 1)))
        cell = rgb.shape[0] / grid
        r, c = divmod(patch, grid)
        axes[i, 0].add_patch(plt.Rectangle((c * cell, r * cell), cell, cell, fill=False, ec="white", lw=2))
        if mask is not None:
            _draw_mask_contour(axes[i, 0], mask, "red")
        _image_axes(axes[i, 0], "query patch" if i == 0 else None, ylabel=f"patch {patch}")
        for j, name in enumerate(names, start=1):
            a = to_numpy(attentions[name])
            a = a[0] if a.ndim == 3 else a
            row = a[1 + patch, 1:].reshape(grid, grid)
            axes[i, j].imshow(rgb)
            im = axes[i, j].imshow(row, cmap=MAP_CMAP, alpha=0.55, extent=(0, rgb.shape[1], rgb.shape[0], 0))
            _image_axes(axes[i, j], name if i == 0 else None, ylabel="")
            fig.colorbar(im, ax=axes[i, j], fraction=0.046, label="weight")
    fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------- curves
def plot_roc_curves(curves: Mapping[str, tuple], title: str = "ROC curves") -> plt.Figure:
    """``{"name": (fpr, tpr)}`` or ``{"name": (fpr, tpr, auroc)}`` -> ROC plot with the chance line."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0), layout="constrained")
    for name, curve in curves.items():
        label = f"{name} (AUROC {curve[2]:.2f})" if len(curve) > 2 else name
        ax.plot(to_numpy(curve[0]), to_numpy(curve[1]), label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.02))
    fig.legend(fontsize=8, loc="outside lower center")  # below the axes: never over a curve
    return fig


def plot_pro_curves(curves: Mapping[str, tuple], fpr_limit: float = 0.3, title: str = "PRO curves") -> plt.Figure:
    """``{"name": (fpr, pro)}`` or ``(fpr, pro, aupro)`` -> per-region overlap vs FPR up to ``fpr_limit``."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0), layout="constrained")
    for name, curve in curves.items():
        label = f"{name} (AUPRO {curve[2]:.2f})" if len(curve) > 2 else name
        ax.plot(to_numpy(curve[0]), to_numpy(curve[1]), label=label)
    ax.axvline(fpr_limit, ls=":", c="grey", lw=1)
    ax.set(xlabel="false positive rate (normal pixels)", ylabel="per-region overlap (PRO)", title=title,
           xlim=(0, fpr_limit * 1.05), ylim=(0, 1.02))
    fig.legend(fontsize=8, loc="outside lower center")  # below the axes: never over a curve
    return fig


def plot_bars(results: Mapping[str, Mapping[str, float]], title: str = "Ablation", ylabel: str = "score",
              xlabel: str = "metric", ylim: tuple[float, float] | None = (0.0, 1.0),
              reference: Mapping[str, Mapping[str, float]] | None = None, fmt: str = "%.2f",
              hlines: Mapping[str, float] | None = None, smoke: bool = False) -> plt.Figure:
    """Grouped bar chart: ``{"setting": {"metric": value}}``; bars labelled with ``fmt``.
    ``reference`` (same shape) is drawn as hatched, labelled bars (numbers not produced here);
    ``hlines`` (``{"name": value}``) as dashed horizontal lines, e.g. the chance level of an AUROC;
    ``smoke=True`` draws the measured bars faded and cross-hatched, like :func:`plot_comparison`'s smoke
    series, and says in the title that they are a pipeline check."""
    import pandas as pd

    rows = [dict(setting=s, metric=m, value=v, kind="measured") for s, d in results.items() for m, v in d.items()]
    rows += [dict(setting=f"{s} (reference)", metric=m, value=v, kind="reference")
             for s, d in (reference or {}).items() for m, v in d.items()]
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(max(6.5 if smoke else 5.0, 1.2 * frame["metric"].nunique() * (1 + 0.35 * frame["setting"].nunique())), 4.0),
                           constrained_layout=True)
    sns.barplot(data=frame, x="metric", y="value", hue="setting", ax=ax)
    for container, setting in zip(ax.containers, frame["setting"].unique()):
        ax.bar_label(container, fmt=fmt, fontsize=7, padding=1)
        if setting.endswith("(reference)"):
            for bar in container:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
        elif smoke:
            for bar in container:
                bar.set(alpha=_BAR_STYLE["smoke"]["alpha"], hatch=_BAR_STYLE["smoke"]["hatch"],
                        edgecolor=_BAR_STYLE["smoke"]["edgecolor"])
    heading = _noted(title) + (f"\nSMOKE: faded bars are a {SMOKE_SERIES}, not a result" if smoke else "")
    ax.set(title=heading, ylabel=ylabel, xlabel=xlabel)
    if ylim:
        ax.set_ylim(*ylim)
    for name, value in (hlines or {}).items():
        ax.axhline(value, ls="--", c="grey", lw=1, label=name)
    legend = ax.legend(fontsize=8, title="setting", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if smoke:  # the legend's swatches of the measured settings look like their bars
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            if isinstance(handle, plt.Rectangle) and not text.get_text().endswith("(reference)"):
                handle.set(alpha=_BAR_STYLE["smoke"]["alpha"], hatch=_BAR_STYLE["smoke"]["hatch"],
                           edgecolor=_BAR_STYLE["smoke"]["edgecolor"])
    return fig


SMOKE_SERIES = "pipeline check (random tiny CLIP)"  # how a smoke run's bars are named in every comparison
NOT_REPORTED = "n.r."  # drawn where zsadlab.references holds no sourced value (the legend explains it)
METRIC_NAMES = {"image_auroc": "image AUROC", "image_ap": "image AP", "pixel_auroc": "pixel AUROC",
                "pixel_ap": "pixel AP", "aupro_mvtec": "AUPRO (exact)", "aupro_anomalyclip": "AUPRO (200 thr.)",
                "image_f1_max": "image F1-max"}  # axis labels of metric-registry names


def _comparison_series(paper, reference_run, this_run, smoke: bool) -> list[tuple[str, str, Mapping]]:
    """``(kind, suffix, {setting: {metric: value}})`` in drawing order: the primary series first."""
    run = ("smoke", SMOKE_SERIES, this_run) if smoke else ("run", "this run", this_run)
    series = [("paper", "paper", paper or {}), ("reference", "reference run", reference_run or {})]
    return [run] + series if not smoke else series + [run]


def plot_comparison(this_run: Mapping[str, Mapping[str, float]],
                    paper: Mapping[str, Mapping[str, float | None]] | None = None,
                    reference_run: Mapping[str, Mapping[str, float]] | None = None, smoke: bool = False,
                    title: str = "Comparison", ylabel: str = "score (%)", xlabel: str = "metric",
                    ylim: tuple[float, float] | None = (0.0, 100.0), fmt: str = "%.1f") -> plt.Figure:
    """"Paper / reference run / this run" bars, grouped by metric (``{"setting": {"metric": value}}``).

    Colour names the setting, the bar's style its source: ``paper`` - published values (from
    :mod:`zsadlab.references`), solid; a ``None`` value is drawn as "n.r." (not reported) instead of
    being left out silently. ``reference_run`` - a reference execution of the series (a course
    pack's), dotted. ``this_run`` - what this notebook measured; with ``smoke=True`` faded,
    cross-hatched and named "pipeline check (random tiny CLIP)", after the paper's, which are the
    primary series. A group holds only the bars it has; the legend sits below the axes, off the data.
    """
    series = _comparison_series(paper, reference_run, this_run, smoke)
    metrics = list(dict.fromkeys(m for _, _, d in series for row in d.values() for m in row))
    slots = [(kind, setting, row) for kind, _, d in series for setting, row in d.items()]
    groups = {m: [slot for slot in slots if m in slot[2]] for m in metrics}  # the bars each group really has
    colours = dict(zip(dict.fromkeys(setting for _, setting, _ in slots), sns.color_palette("colorblind", 10) * 3))
    width = 0.8 / max([1] + [len(group) for group in groups.values()])
    bars = sum(len(group) for group in groups.values())
    fig, ax = plt.subplots(figsize=(min(15.0, 3.0 + max(4.0, 0.3 * bars + 0.5 * len(metrics))), 4.6), layout="constrained")
    flagged = False
    for j, (metric, group) in enumerate(groups.items()):
        for i, (kind, setting, row) in enumerate(group):
            x, height = j + (i - (len(group) - 1) / 2) * width, row[metric]
            drawn = ax.bar([x], [0.0 if height is None else height], width, color=colours[setting], **_BAR_STYLE[kind])
            ax.bar_label(drawn, labels=["" if height is None else fmt % height], fontsize=7, padding=1)
            if kind == "paper" and height is None:
                ax.text(x, ylim[0] if ylim else 0.0, NOT_REPORTED, rotation=90, ha="center", va="bottom", fontsize=9,
                        fontweight="bold", color="0.3")
                flagged = True
    ax.set_xticks(np.arange(len(metrics)), [METRIC_NAMES.get(m, m) for m in metrics])
    heading = _noted(title) + (f"\nSMOKE: faded bars are a {SMOKE_SERIES}, not a result" if smoke else "")
    ax.set(title=heading, ylabel=ylabel, xlabel=xlabel)
    if ylim:
        ax.set_ylim(*ylim)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in colours.values()]
    labels = list(colours)
    for kind, suffix, d in series:  # one entry per source present: its bar style, in grey
        if d:
            handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="0.55", **_BAR_STYLE[kind]))
            labels.append(f"style: {suffix}")
    if flagged:
        handles.append(plt.Rectangle((0, 0), 0, 0, fill=False, edgecolor="none"))
        labels.append(f"{NOT_REPORTED} = no sourced value in zsadlab.references")
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=legend_columns(labels, fig))
    return fig


def legend_columns(labels: Sequence[str], fig: plt.Figure, fontsize: float = 8) -> int:
    """How many legend columns of ``labels`` fit side by side in ``fig``'s width (at most 4)."""
    column = 0.6 * fontsize * max(len(label) for label in labels) + 4 * fontsize  # points: text + handle and padding
    return max(1, min(4, len(labels), int(fig.get_figwidth() * 72 // column)))


_BAR_STYLE = {"paper": dict(alpha=0.95), "reference": dict(alpha=0.75, hatch=".."), "run": dict(alpha=0.95),
              "smoke": dict(alpha=0.35, hatch="xx", edgecolor="0.35")}


def plot_loss_curves(histories: Mapping[str, Sequence[float]], title: str = "Training loss",
                     xlabel: str = "step", ylabel: str = "loss", smooth: int = 1, logy: bool = False) -> plt.Figure:
    """One line per run (``{"name": [loss per step]}``); ``smooth > 1`` draws the running mean over
    ``smooth`` steps (window named in the title; the x axis is the step ending each window)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    smoothed = False
    for name, values in histories.items():
        y = np.asarray(to_numpy(list(values)), dtype=float)
        x = np.arange(1, len(y) + 1)
        if smooth > 1 and len(y) >= smooth:
            y, x, smoothed = np.convolve(y, np.ones(smooth) / smooth, mode="valid"), x[smooth - 1:], True
        ax.plot(x, y, marker="o" if len(y) <= 20 else None, ms=3, label=name)
    ax.set(title=title + (f" (running mean over {smooth} {xlabel}s)" if smoothed else ""), xlabel=xlabel, ylabel=ylabel)
    points = sorted({int(x) for line in ax.get_lines() for x in line.get_xdata()})  # steps, epochs, blocks: whole
    if len(points) <= 20:
        ax.set_xticks(points)
    else:
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return fig


def plot_k_shot(results: Mapping[str, Mapping[int, Sequence[float]]], title: str = "Few-shot curves",
                ylabel: str = "image AUROC (%)", reference: Mapping[str, Mapping[int, float]] | None = None,
                hlines: Mapping[str, float] | None = None, percent: bool = True, smoke: bool = False,
                published_hlines: Mapping[str, float] | None = None) -> plt.Figure:
    """``{"method": {k: [value per seed]}}`` -> mean line with a shaded min-max band over the seeds
    (one legend entry for both); optional reference curves - published values, already in % -
    (``{"name": {k: value}}``, drawn in the colour of the method whose name they start with; a measured
    method without one is named "n.r." in the legend), horizontal lines measured here (``hlines``,
    ``{"name": value}``) and published ones (``published_hlines``, in %, solid black). Measured values in
    [0, 1] are drawn in % when ``percent``. With ``smoke=True`` the measured curves are dotted, faded and
    named a pipeline check, and the published curves are the primary, solid ones. The legend sits below
    the axes."""
    scale = 100.0 if percent else 1.0
    palette = dict(zip(results, sns.color_palette("colorblind", 10) * 3))
    colour_of = lambda name: next((c for method, c in palette.items() if name.startswith(method)), None)  # noqa: E731
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    handles, labels = [], []
    for name, per_k in (reference or {}).items():
        ks = sorted(per_k)
        line, = ax.plot(ks, [per_k[k] for k in ks], ls="-" if smoke else "--", lw=2.5 if smoke else 1.5, marker="s",
                        color=colour_of(name))
        handles.append(line), labels.append(f"{name} (published, not produced here)")
    for name, per_k in results.items():
        ks = sorted(per_k)
        vals = [scale * np.asarray(per_k[k], dtype=float) for k in ks]
        line, = ax.plot(ks, [v.mean() for v in vals], marker="o", ls=":" if smoke else "-", alpha=0.5 if smoke else 1.0,
                        color=palette[name])
        band = ax.fill_between(ks, [v.min() for v in vals], [v.max() for v in vals], alpha=0.1 if smoke else 0.2,
                               color=palette[name])
        handles.append((band, line)), labels.append(f"{name}: mean over {len(vals[0])} prompt seeds, band = min-max over seeds")
    for name, value in (hlines or {}).items():
        handles.append(ax.axhline(scale * value, ls="-.", c="grey")), labels.append(name + (f" - {SMOKE_SERIES}" if smoke else ""))
    for name, value in (published_hlines or {}).items():
        handles.append(ax.axhline(value, ls="-", c="black", lw=1.5)), labels.append(f"{name} (published, not produced here)")
    unsourced = [name for name in results if reference and not any(ref.startswith(name) for ref in reference)]
    if unsourced:
        handles.append(plt.Rectangle((0, 0), 0, 0, fill=False, edgecolor="none"))
        labels.append(f"{', '.join(unsourced)}: {NOT_REPORTED} = no sourced value in zsadlab.references")
    if smoke:
        handles.append(plt.Line2D([], [], ls=":", marker="o", alpha=0.5, color="0.4"))
        labels.append(f"dotted, faded: {SMOKE_SERIES}")
    ax.set(title=_noted(title) + (f"\nSMOKE: faded curves are a {SMOKE_SERIES}, not a result" if smoke else ""),
           xlabel="k (normal shots)", ylabel=ylabel)
    ax.set_xticks(sorted({k for d in results.values() for k in d}))
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=1)
    return fig


def plot_confusion_matrix(matrix, threshold: float, title: str = "Confusion matrix",
                          classes: Sequence[str] = ("normal", "anomalous")) -> plt.Figure:
    """A 2 x 2 confusion matrix ``[[TN, FP], [FN, TP]]`` (rows: truth, columns: decision) as counts."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.6, 3.8), constrained_layout=True)
    ax.grid(False)
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(int(count)), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black", fontsize=12)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=classes, yticklabels=classes,
           xlabel=f"decision (anomalous if score >= {threshold:.3g})", ylabel="ground truth", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="images")
    return fig


def plot_thresholds(scores, labels, thresholds: Mapping[str, float], title: str = "Image scores and thresholds",
                    xlabel: str = "image anomaly score") -> plt.Figure:
    """:func:`plot_score_histogram` with one vertical line per named threshold (``{"name": value}``)."""
    fig = plot_score_histogram(scores, labels, title=title, xlabel=xlabel)
    fig.set_size_inches(7.6, 3.6)
    ax = fig.axes[0]
    for (name, value), style in zip(thresholds.items(), ("-", "--", "-.", ":")):
        ax.axvline(value, c="black", ls=style, label=f"{name}: {value:.3g}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def plot_coverage(curve: Mapping[str, np.ndarray], n: int, repeats: int,
                  title: str = "False alarms of calibrated thresholds") -> plt.Figure:
    """Observed false-alarm rate vs the requested alpha (left: conformal +- 3 standard errors and the plain
    quantile, with the guarantee line y = alpha) and the miss rate each threshold costs (right), from
    :func:`zsadlab.calibration.coverage`."""
    alpha = np.asarray(curve["alpha"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8), constrained_layout=True)
    left.plot(alpha, alpha, c="black", ls="--", label="guarantee: false alarms <= alpha")
    left.errorbar(alpha, curve["conformal false alarms"], yerr=3 * np.asarray(curve["conformal false alarms se"]),
                  marker="o", capsize=3, label="conformal threshold (+- 3 SE)")
    left.plot(alpha, curve["quantile false alarms"], marker="s", label="plain (1 - alpha) quantile")
    left.set(title=f"{title}\n{n} normal images, {repeats} random splits", xlabel="alpha (requested rate)",
             ylabel="observed false-alarm rate")
    left.legend(fontsize=7)
    right.plot(alpha, curve["conformal misses"], marker="o", label="conformal threshold")
    right.plot(alpha, curve["quantile misses"], marker="s", label="plain (1 - alpha) quantile")
    right.set(title="What each threshold costs: missed anomalies", xlabel="alpha (requested rate)",
              ylabel="miss rate on anomalous images", ylim=(-0.02, 1.02))
    right.legend(fontsize=7)
    return fig


def plot_score_histogram(scores, labels, title: str = "Image scores", xlabel: str = "anomaly score") -> plt.Figure:
    """Histogram of image scores of normal vs anomalous images."""
    scores, labels = to_numpy(scores).ravel(), to_numpy(labels).ravel()
    fig, ax = plt.subplots(figsize=(5.0, 3.4), constrained_layout=True)
    bins = np.linspace(scores.min(), scores.max() + 1e-9, 21)
    for value, name in ((0, "normal"), (1, "anomalous")):
        ax.hist(scores[labels == value], bins=bins, alpha=0.6, label=f"{name} (n={int((labels == value).sum())})")
    ax.set(title=title, xlabel=xlabel, ylabel="images")
    ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))  # counts of images
    ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- tables
def format_table(rows: Mapping[str, Mapping[str, float]], decimals: int = 2, index_name: str = "setting",
                 percent: bool = False) -> str:
    """A plain-text table of ``{"row": {"column": value}}`` with fixed decimals (stable for nbval)."""
    columns: list[str] = []
    for values in rows.values():
        columns += [c for c in values if c not in columns]
    scale = 100.0 if percent else 1.0

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if not np.isfinite(v) else f"{v * scale:.{decimals}f}"
        return str(v)

    body = [[str(name)] + [cell(values.get(c, "")) for c in columns] for name, values in rows.items()]
    header = [index_name] + columns
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [line(r) for r in body])


def print_table(rows: Mapping[str, Mapping[str, float]], decimals: int = 2, index_name: str = "setting",
                title: str | None = None, percent: bool = False) -> None:
    """Print :func:`format_table` (with an optional title line, and the budget note, :func:`set_budget_note`)."""
    if title:
        print(_noted(title))
    print(format_table(rows, decimals, index_name, percent))


def defect_patch(mask, grid: int) -> int:
    """Row-major index of the ``grid x grid`` patch most covered by ``mask`` ``[S, S]`` (0 if empty)."""
    m = torch.as_tensor(to_numpy(mask), dtype=torch.float32)[None, None]  # [1, 1, S, S]
    cover = torch.nn.functional.adaptive_avg_pool2d(m, grid).flatten()  # [grid*grid]
    return int(cover.argmax())
