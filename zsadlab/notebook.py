"""The notebooks' set-up and the helpers every notebook shares, so the notebooks hold narrative only.

    from zsadlab.notebook import start
    S = start(profile=profile, device=device, data_root=data_root, output_dir=output_dir, seed=seed, ...)
    model, run = S.trained("anomalyclip")                 # load-or-train through the run cache
    table = engine.evaluate(model, S.dataset(S.test_name, model))   # at the method's evaluation batch
    S.summary(table)

:func:`start` returns a :class:`Session`: the profile, the device, the resolved paths, the seed,
the budget (``classes``, ``max_images_per_class``, ``epochs``, ``steps_per_epoch``; in the lab profile
its :class:`~zsadlab.profiles.Budget` fills the ones the notebook leaves ``None``) and the run
cache. Trainings go through :func:`zsadlab.engine.cache.load_or_train`, so a training that any
notebook already ran (same method, config, data, seed, epochs and budget) is loaded, not redone;
:meth:`Session.official` loads a pulled official checkpoint instead (full profile).
"""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import os
import re

import numpy as np
import torch

from . import engine, pretrained, viz
from .answers import expected  # noqa: F401  (the notebooks' check cells: check(name, answer, expected(key, ...)))
from .data import AnomalyDataset, DatasetError, ensure_dataset
from .data.registry import ANOMALYCLIP_BENCHMARK
from .engine.cache import CACHE_ENV, CachedRun, RunSpec, load_or_train, log_request, run_spec
from .methods import get_method
from .pack import installed_reference
from .profiles import Budget, Profile, get_profile
from .utils import pick_device, seed_everything

COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "aupro_mvtec", "aupro_anomalyclip")
CACHE = "runs/cache"  # the run cache, relative to the repository root


@dataclass(frozen=True)
class DataRef:
    """Training data named without a path: the registry dataset ``name`` under the session's data
    root, or - with ``folder`` - its draw with ``seed`` in ``<data_root>/<folder>/`` (a generated
    stand-in, e.g. notebook 07's held-out smoke images)."""

    name: str
    folder: str | None = None
    seed: int = 0


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
    classes_per_dataset: int | None = None  # the first N classes (sorted) of every dataset, where ``classes`` is None
    budget: Budget | None = None  # the part of the profile's budget applied here (the notebook left it None)

    @property
    def budget_note(self) -> str:
        """The budget of this session's data and trainings in words ("" without one): what every result
        table and comparison figure of a budgeted run says."""
        parts = [f"classes {list(self.classes)}" if self.classes else
                 f"first {self.classes_per_dataset} classes of each dataset" if self.classes_per_dataset else "",
                 f"<= {self.max_images_per_class} images per class" if self.max_images_per_class else "",
                 f"<= {self.steps_per_epoch} training steps per epoch" if self.steps_per_epoch else ""]
        note = ", ".join(p for p in parts if p)
        return f"budget: {note}" if note else ""

    def without_budget(self) -> "Session | None":
        """This session without the profile's budget (the notebook's own budget kept): what the full-schedule
        run is keyed by; None when no profile budget applies."""
        if self.budget is None:
            return None
        dropped = {f.name: None for f in dataclasses.fields(Budget) if getattr(self.budget, f.name) is not None}
        return dataclasses.replace(self, budget=None, **dropped)

    # --- names and sizes chosen by the profile ---------------------------------------------------
    @property
    def train_name(self) -> str:
        """The auxiliary (training) dataset of the profile: MVTec AD in full, synthetic_industrial in smoke."""
        return self.profile.train_dataset

    @property
    def test_name(self) -> str:
        """The zero-shot target of the profile: VisA in full, synthetic_ultrasound in smoke."""
        return self.profile.test_dataset

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
        """``dataset`` cut to the session's budget: the chosen ``classes`` (else the first ``classes_per_dataset``)
        and at most ``max_images_per_class`` images per class (seeded, both labels kept). Under a profile budget
        the draw's seed is 0 whatever the training seed, so every notebook (and every seed of an ablation) sees
        the same subset and shares its runs; otherwise it is the session's seed."""
        classes = self.classes
        if classes is None and self.classes_per_dataset is not None:
            classes = dataset.classes[:self.classes_per_dataset]
        if classes is None and self.max_images_per_class is None:
            return dataset
        seed = 0 if self.budget is not None else self.seed or 0
        return dataset.budget(classes=classes, max_images_per_class=self.max_images_per_class, seed=seed)

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

    def data(self, train: "str | Path | DataRef") -> Path:
        """The root of training data ``train``: a registry name under ``data_root``, the path of a prepared
        dataset, or a :class:`DataRef` (a generated stand-in in a subfolder of ``data_root``)."""
        if isinstance(train, DataRef):
            return self.root(train.name) if train.folder is None else \
                ensure_dataset(train.name, self.data_root / train.folder, seed=train.seed)
        return self.root(train) if isinstance(train, str) else Path(train)

    def training(self, method: str, train_name: "str | Path | DataRef | None" = None,
                 **changes) -> tuple[torch.nn.Module, AnomalyDataset, RunSpec]:
        """What :meth:`trained` would train - the model, its training set and the run-cache
        :class:`RunSpec` (key included) - without training: the one path :meth:`trained` and the
        course plan (``zsadlab course plan``) share, so the plan's keys are the notebooks' keys.
        Under a profile budget it is the full-schedule run (the profile's budget dropped) where that one
        is already in the run cache (e.g. from a course pack), else the run within the budget."""
        model, data, spec, _ = self._training(method, train_name, **changes)
        return model, data, spec

    def _training(self, method: str, train_name, **changes):
        """:meth:`training` and whether it is the budget's shortened run rather than the full-schedule one."""
        root = self.data(train_name or self.train_name)  # a missing dataset fails before any weights load
        model = self.build(method, **changes)
        full = self.without_budget()
        for S in ([full] if full is not None else []) + [self]:
            data = S.training_set(root, model)
            spec = run_spec(model, data, epochs=S.epochs, seed=S.seed, max_steps_per_epoch=S.steps_per_epoch)
            if S is self or spec.done(self.cache):
                return model, data, spec, full is not None and S is self

    def trained(self, method: str, train_name: "str | Path | DataRef | None" = None,
                **changes) -> tuple[torch.nn.Module, CachedRun]:
        """``method`` (with config ``changes``) trained on ``train_name`` (a registry name, or the path
        of a prepared dataset; default: the profile's auxiliary set) with its official recipe - or
        loaded from the run cache if this exact training already ran in any notebook (or came in a
        course pack: ``zsadlab course pack pull``)."""
        model, data, spec, shortened = self._training(method, train_name, **changes)
        if shortened:
            print(f"{method}: shortened schedule, {self.profile.name} {self.budget_note} (the run cache holds no "
                  "full-schedule run of it, e.g. from a course pack)")
        run = load_or_train(model, data, self.cache, epochs=spec.epochs, seed=spec.seed,
                            max_steps_per_epoch=spec.max_steps_per_epoch)
        print(f"{method} on {Path(data.root).name}: {run.action} ({run.folder.name})")
        return model, run

    def official_path(self, checkpoint_name: str | None, checkpoint: str | None = None) -> Path | None:
        """The weights :meth:`official` loads instead of training: the user's ``checkpoint`` file, else
        (meaningful profiles only) the pulled official checkpoint ``checkpoint_name`` (None: there is
        none); None: train."""
        path = viz.resolve_path(checkpoint) if checkpoint else None
        if path is None and checkpoint_name and self.profile.meaningful and pretrained.available(checkpoint_name):
            path = pretrained.path(checkpoint_name)
        return path

    def official(self, checkpoint_name: str | None = None, method: str = "anomalyclip",
                 train_name: str | None = None, checkpoint: str | None = None, **changes):
        """The model with official weights where they exist, else trained (or reused) here.

        ``checkpoint``: a file given by the user; otherwise, in the full profile, the pulled
        official checkpoint ``checkpoint_name`` (``zsadlab pull``; default: the official checkpoint of
        ``method`` trained on ``train_name``, :func:`zsadlab.pretrained.official_for`, e.g. ``vand-mvtec``)
        when it is on this machine.
        Returns ``(model, action)`` with action ``"pulled"``, ``"trained"`` or ``"reused"``.
        """
        checkpoint_name = checkpoint_name or pretrained.official_for(method, train_name or self.train_name)
        path = self.official_path(checkpoint_name, checkpoint)
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

    def reference_run(self, table_name: str):
        """The reference run's version of this notebook's table ``table_name``, from the installed course pack
        (``zsadlab course pack pull``: the instructor's execution of the series with the same code - a
        reference, neither a paper number nor this run), or None without a pack or that table.

        ``table_name`` is a file the notebook writes into its output folder (``"loss_ablation.json"``; a
        CSV comes back as a list of row dicts) or the name of a comparison figure, ``"<NN>_<table>"``
        (``"02_dpam_ablation"``), for :func:`zsadlab.viz.plot_comparison`: then the notebook's
        ``<table>.json`` as ``{"setting": {"metric": value in %}}`` - its ``mean`` or ``measured``
        part where it has one, values in [0, 1] scaled to %."""
        path = installed_reference(self.cache, self.out.name, table_name)
        if path is not None and path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if path is not None:
            return json.loads(path.read_text(encoding="utf-8"))
        stem = table_name.split("_", 1)[1] if table_name[:2].isdigit() and "_" in table_name else table_name
        path = installed_reference(self.cache, self.out.name, stem + ".json")
        return None if path is None else comparison_series(json.loads(path.read_text(encoding="utf-8")))

    def summary(self, table, columns: Sequence[str] = COLUMNS) -> dict[str, float]:
        """The mean row of a result table, restricted to ``columns`` (those the table has)."""
        return {c: table.mean[c] for c in columns if c in table.columns}


def comparison_series(table) -> dict[str, dict[str, float]] | None:
    """``table`` (a notebook's result JSON) as ``{"setting": {"metric": value in %}}``: its ``mean`` or
    ``measured`` part where it has one; values all in [0, 1] are fractions and come back in %. None when
    the table has another shape."""
    if isinstance(table, dict) and len(table) > 1:
        table = table.get("mean", table.get("measured", table))
    if not (isinstance(table, dict) and table and all(isinstance(row, dict) for row in table.values())):
        return None
    rows = {setting: {m: v for m, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for setting, row in table.items()}
    values = [v for row in rows.values() for v in row.values()]
    scale = 100.0 if values and all(0.0 <= v <= 1.0 for v in values) else 1.0
    return {setting: {m: scale * v for m, v in row.items()} for setting, row in rows.items()}


def start(profile: str = "auto", device: str = "auto", data_root: str = "auto", output_dir: str = "figures",
          seed: int | None = None, epochs: int | None = None, image_size: int | None = None,
          classes: Sequence[str] | None = None, max_images_per_class: int | None = None,
          steps_per_epoch: int | None = None, cache: str | None = None) -> Session:
    """The notebook's :class:`Session` from its parameters cell; prints one line that says what it is.

    ``device="auto"`` is the best device in the full profile and the CPU in the smoke profile
    (tiny models: one CPU thread is fastest and steadiest); relative paths are resolved against
    the repository root, whatever the notebook's working directory. ``cache``: the run cache
    (default ``$ZSADLAB_CACHE``, else ``runs/cache``). The profile's :class:`~zsadlab.profiles.Budget`
    (lab) is the default of each budget parameter left ``None`` (``classes`` None: its first
    ``classes_per_dataset`` classes); explicit parameters win.
    """
    chosen = get_profile(profile)  # prints the SMOKE banner when the numbers are not meaningful
    if not chosen.meaningful:
        torch.set_num_threads(1)
    seed_everything(0 if seed is None else seed)
    viz.label_smoke_figures(not chosen.meaningful)  # every figure of a smoke run says it is a pipeline check
    viz.set_style()
    given = {"classes_per_dataset": classes, "max_images_per_class": max_images_per_class,
             "steps_per_epoch": steps_per_epoch}
    applied = None if chosen.budget is None else dataclasses.replace(  # the profile's defaults the notebook left open
        chosen.budget, **{name: None for name, value in given.items() if value is not None})
    defaults = dataclasses.asdict(applied) if applied else {}
    applied = applied if any(v is not None for v in defaults.values()) else None
    session = Session(
        profile=chosen, device=pick_device("cpu" if device == "auto" and not chosen.meaningful else device),
        data_root=viz.resolve_path("data" if data_root == "auto" else data_root),
        out=viz.resolve_path(output_dir), cache=viz.resolve_path(cache or os.environ.get(CACHE_ENV, CACHE)), seed=seed, epochs=epochs,
        image_size=image_size, classes=classes, **{name: value if value is not None else defaults.get(name)
                                                   for name, value in given.items() if name != "classes_per_dataset"},
        classes_per_dataset=defaults.get("classes_per_dataset"), budget=applied)
    budget = "full data" if classes is None and max_images_per_class is None else \
        f"classes {list(classes) if classes else 'all'}, <= {max_images_per_class or 'all'} images per class"
    viz.set_budget_note(session.budget_note if chosen.budget is not None else "")
    if chosen.budget is not None:
        budget = session.budget_note + " (shortened schedules only where the run cache has no full-schedule run)"
    print(f"profile: {chosen.name} | device: {session.device} | {budget} | figures -> {output_dir}")
    return session


def bare_label(text: str, note: bool = True) -> str:
    """``text`` in lower case without blanks (and, with ``note=False``, without a parenthesised note), so
    that labels compare by their words: ``"1 - 10 %"`` is ``"1-10%"``, ``"V-V (AnomalyCLIP)"`` is ``"v-v"``."""
    return "".join((text if note else re.sub(r"\([^)]*\)", "", text)).casefold().split())


class CheckResult:
    """Whether an exercise's answer matched: true or false like a bool, and displays nothing when it
    ends a notebook cell (the line :func:`check` printed says it)."""

    def __init__(self, ok: bool):
        self.ok = bool(ok)

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"CheckResult({self.ok})"

    def _ipython_display_(self) -> None:
        pass


def check(name: str, answer, expected, tolerance: float = 0.0) -> CheckResult:
    """An exercise's automatic check: prints whether ``answer`` matches ``expected`` - numbers within
    ``tolerance``, arrays element-wise within it (same shape), anything else by equality - never the
    expected answer itself, and returns the verdict. ``expected=None`` is an answer this run cannot
    grade (a prediction about a full-profile run checked in a smoke run): the answer is recorded, not
    judged. Never raises, so a notebook with an unanswered exercise (``answer is None``) still runs
    top to bottom. Expected values come from :func:`zsadlab.answers.expected`, out of the student's cell."""
    if answer is None:
        print(f"{name}: not answered yet")
        return CheckResult(False)
    if expected is None:
        print(f"{name}: answer recorded ({answer!r}), not graded - this run has nothing meaningful to grade it "
              f"against (a smoke run's numbers are noise, or the exercise's measurement is not made yet). Compare "
              f"with a full-profile run or your instructor's reference run.")
        return CheckResult(False)
    ok = matches(answer, expected, tolerance)
    print(f"{name}: {'correct' if ok else f'not yet (your answer: {answer!r}) - try again'}")
    return CheckResult(ok)


def matches(answer, expected, tolerance: float = 0.0) -> bool:
    """Whether ``answer`` is ``expected``: a label regardless of case, blanks and a parenthesised note
    (``"q-k"`` is ``"Q-K (CLIP)"``), numbers within ``tolerance``, arrays (numpy or torch) of the same shape
    element-wise within it, any member of a set of accepted answers, anything else by equality; an answer of
    the wrong kind is no match."""
    if isinstance(expected, (set, frozenset)):
        return any(matches(answer, accepted, tolerance) for accepted in expected)
    if isinstance(expected, str):
        return isinstance(answer, str) and bare_label(answer) in {bare_label(expected), bare_label(expected, note=False)}
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        try:
            return abs(float(answer) - float(expected)) <= tolerance
        except (TypeError, ValueError):
            return False
    if isinstance(expected, (np.ndarray, torch.Tensor)):
        try:
            answer, expected = np.asarray(answer, np.float64), np.asarray(expected, np.float64)
        except (TypeError, ValueError):
            return False
        return answer.shape == expected.shape and bool(np.all(np.abs(answer - expected) <= tolerance))
    return answer == expected
