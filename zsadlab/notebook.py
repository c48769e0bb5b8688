"""The notebooks' set-up and the helpers every notebook shares, so the notebooks hold narrative only.

    from zsadlab.notebook import start
    S = start(profile=profile, device=device, data_root=data_root, output_dir=output_dir, seed=seed, ...)
    model, run = S.trained("anomalyclip")                 # load-or-train through the run cache
    table = engine.evaluate(model, S.dataset(S.test_name, model), batch_size=S.batch_size)
    S.summary(table)

:func:`start` returns a :class:`Session`: the profile, the device, the resolved paths, the seed,
the budget (``classes``, ``max_images_per_class``, ``epochs``, ``steps_per_epoch``) and the run
cache. Trainings go through :func:`zsadlab.engine.cache.load_or_train`, so a training that any
notebook already ran (same method, config, data, seed, epochs and budget) is loaded, not redone;
:meth:`Session.official` loads a pulled official checkpoint instead (full profile).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import os

import torch

from . import engine, pretrained, viz
from .data import AnomalyDataset, DatasetError, ensure_dataset
from .data.registry import ANOMALYCLIP_BENCHMARK
from .engine.cache import CACHE_ENV, CachedRun, load_or_train, log_request
from .methods import get_method
from .profiles import Profile, get_profile
from .utils import pick_device, seed_everything

COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "aupro_mvtec", "aupro_anomalyclip")
CACHE = "runs/cache"  # the run cache, relative to the repository root


@dataclass
class Session:
    """Everything a notebook's cells share: profile, device, paths, seed and budget."""

    profile: Profile
    device: torch.device
    data_root: Path
    out: Path
    cache: Path
    seed: int | None = None  # None: each method's official seed (AnomalyCLIP 111, InCTRL 10)
    epochs: int | None = None  # None: each method's recipe (profile.config(method).epochs)
    image_size: int | None = None
    classes: Sequence[str] | None = None
    max_images_per_class: int | None = None
    steps_per_epoch: int | None = None

    # --- names and sizes chosen by the profile ---------------------------------------------------
    @property
    def train_name(self) -> str:
        """The auxiliary (training) dataset of the profile: MVTec AD in full, synthetic_industrial in smoke."""
        return self.profile.train_dataset

    @property
    def test_name(self) -> str:
        """The zero-shot target of the profile: VisA in full, synthetic_ultrasound in smoke."""
        return self.profile.test_dataset

    @property
    def batch_size(self) -> int:
        """The evaluation batch (AnomalyCLIP's training batch of the profile)."""
        return self.profile.config("anomalyclip").batch_size

    # --- models and data --------------------------------------------------------------------------
    def build(self, method: str, **changes):
        """``engine.build_model`` on this session's profile, device and seed (and ``image_size``)."""
        if self.image_size is not None:
            changes.setdefault("image_size", self.image_size)
        return engine.build_model(method, self.profile, self.device, seed=self.seed, **changes)

    def root(self, name: str) -> Path:
        """The prepared dataset ``name`` under ``data_root`` (synthetic sets are generated on demand)."""
        return ensure_dataset(name, self.data_root, seed=0)

    def budgeted(self, dataset: AnomalyDataset) -> AnomalyDataset:
        """``dataset`` cut to the session's budget: the chosen ``classes`` and at most
        ``max_images_per_class`` images per class (seeded, both labels kept)."""
        if self.classes is None and self.max_images_per_class is None:
            return dataset
        return dataset.budget(classes=self.classes, max_images_per_class=self.max_images_per_class, seed=self.seed or 0)

    def dataset(self, name: str, model, split: str = "test", require_masks: bool = False) -> AnomalyDataset:
        """Split ``split`` of dataset ``name`` as ``model`` reads it, within the budget."""
        return self.budgeted(engine.dataset_for(model, self.root(name), split, require_masks=require_masks))

    def support(self, name: str, model) -> AnomalyDataset | None:
        """Where few-shot sample prompts of dataset ``name`` come from (``engine.support_set``: its
        train split, or ``None`` - then the evaluation draws them from its normal test images)."""
        support = engine.support_set(model, self.root(name))
        return None if support is None else self.budgeted(support)

    def zero_shot_targets(self, train_name: str, names: Sequence[str] | str = "auto") -> list[str]:
        """The zero-shot targets after training on ``train_name``: ``names`` (``"auto"``: the 17
        datasets of the AnomalyCLIP paper's Tables 1-2 in a meaningful profile, the profile's test set
        in smoke) without ``train_name`` (not zero-shot) and without the sets not prepared under
        ``data_root``, each of which is named in one line."""
        if names == "auto":
            names = ANOMALYCLIP_BENCHMARK if self.profile.meaningful else (self.test_name,)
        targets = []
        for name in names:
            if name == train_name:
                continue
            try:
                self.root(name)
            except DatasetError as err:
                print(f"skipping {name}: {str(err).splitlines()[0][:160]}")
                continue
            targets.append(name)
        return targets

    def training_set(self, name: str | Path, model) -> AnomalyDataset:
        """What ``model``'s method trains on in dataset ``name`` - a registry name under ``data_root``,
        or the path of a prepared dataset - (its recipe's split), within the budget."""
        recipe = get_method(model.method_name).recipe
        root = self.root(name) if isinstance(name, str) else Path(name)
        return self.budgeted(engine.dataset_for(model, root, recipe.training_split,
                                                require_masks=recipe.require_masks))

    def trained(self, method: str, train_name: str | Path | None = None, **changes) -> tuple[torch.nn.Module, CachedRun]:
        """``method`` (with config ``changes``) trained on ``train_name`` (a registry name, or the path
        of a prepared dataset; default: the profile's auxiliary set) with its official recipe - or
        loaded from the run cache if this exact training already ran in any notebook."""
        model = self.build(method, **changes)
        data = self.training_set(train_name or self.train_name, model)
        run = load_or_train(model, data, self.cache, epochs=self.epochs, seed=self.seed,
                            max_steps_per_epoch=self.steps_per_epoch)
        print(f"{method} on {Path(data.root).name}: {run.action} ({run.folder.name})")
        return model, run

    def official(self, checkpoint_name: str = "anomalyclip-mvtec", method: str = "anomalyclip",
                 train_name: str | None = None, checkpoint: str | None = None, **changes):
        """The model with official weights where they exist, else trained (or reused) here.

        ``checkpoint``: a file given by the user; otherwise, in the full profile, the pulled
        official checkpoint ``checkpoint_name`` (``zsadlab pull``) when it is on this machine.
        Returns ``(model, action)`` with action ``"pulled"``, ``"trained"`` or ``"reused"``.
        """
        path = viz.resolve_path(checkpoint) if checkpoint else None
        if path is None and self.profile.meaningful and pretrained.available(checkpoint_name):
            path = pretrained.path(checkpoint_name)
        if path is None:
            model, run = self.trained(method, train_name, **changes)
            return model, run.action
        model = engine.load_checkpoint(self.build(method, **changes), path)
        log_request(Path(path).name if checkpoint else checkpoint_name, "pulled")
        print(f"{method}: official weights from {path}")
        return model, "pulled"

    @property
    def smoke(self) -> bool:
        """True when the numbers are not meaningful (tiny random CLIPs, synthetic data): every comparison
        figure then draws the published values as its primary series and this run as a pipeline check."""
        return not self.profile.meaningful

    def reference_run(self, table_name: str) -> dict[str, dict[str, float]] | None:
        """The result table ``table_name`` (``{"setting": {"metric": value in %}}``) of a reference
        execution of the series - the one an installed course pack ships - for the "reference run"
        series of :func:`zsadlab.viz.plot_comparison`; ``None`` when no reference execution is installed
        (always, until course packs provide one)."""
        return None

    def summary(self, table, columns: Sequence[str] = COLUMNS) -> dict[str, float]:
        """The mean row of a result table, restricted to ``columns`` (those the table has)."""
        return {c: table.mean[c] for c in columns if c in table.columns}


def start(profile: str = "auto", device: str = "auto", data_root: str = "auto", output_dir: str = "figures",
          seed: int | None = None, epochs: int | None = None, image_size: int | None = None,
          classes: Sequence[str] | None = None, max_images_per_class: int | None = None,
          steps_per_epoch: int | None = None, cache: str | None = None) -> Session:
    """The notebook's :class:`Session` from its parameters cell; prints one line that says what it is.

    ``device="auto"`` is the best device in the full profile and the CPU in the smoke profile
    (tiny models: one CPU thread is fastest and steadiest); relative paths are resolved against
    the repository root, whatever the notebook's working directory. ``cache``: the run cache
    (default ``$ZSADLAB_CACHE``, else ``runs/cache``).
    """
    chosen = get_profile(profile)  # prints the SMOKE banner when the numbers are not meaningful
    if not chosen.meaningful:
        torch.set_num_threads(1)
    seed_everything(0 if seed is None else seed)
    viz.set_style()
    session = Session(
        profile=chosen, device=pick_device("cpu" if device == "auto" and not chosen.meaningful else device),
        data_root=viz.resolve_path("data" if data_root == "auto" else data_root),
        out=viz.resolve_path(output_dir), cache=viz.resolve_path(cache or os.environ.get(CACHE_ENV, CACHE)), seed=seed, epochs=epochs,
        image_size=image_size, classes=classes, max_images_per_class=max_images_per_class,
        steps_per_epoch=steps_per_epoch)
    budget = "full data" if classes is None and max_images_per_class is None else \
        f"classes {list(classes) if classes else 'all'}, <= {max_images_per_class or 'all'} images per class"
    print(f"profile: {chosen.name} | device: {session.device} | {budget} | figures -> {output_dir}")
    return session


def check(name: str, answer, expected, tolerance: float = 0.0) -> bool:
    """An exercise's automatic check: prints whether ``answer`` matches ``expected`` (numbers within
    ``tolerance``, anything else by equality) and returns it; never raises, so a notebook with an
    unanswered exercise (``answer is None``) still runs top to bottom."""
    if answer is None:
        print(f"{name}: not answered yet")
        return False
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        ok = abs(float(answer) - float(expected)) <= tolerance
    else:
        ok = answer == expected
    print(f"{name}: {'correct' if ok else f'not yet (expected {expected!r}, got {answer!r})'}")
    return ok
