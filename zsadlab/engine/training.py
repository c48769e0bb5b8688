"""The one trainer for every learning method, on one process or many (DDP under torchrun).

:func:`train` runs a method's :class:`~zsadlab.methods.Recipe`: a seeded plan of global batches
per epoch, the method's optimizer and training step (:func:`train_step`), a progress bar, the
method's precision (``Method.precision``: on CUDA fp16 autocast with a GradScaler for VAND, whose
official ``train.py`` runs under ``torch.cuda.amp.autocast()``, fp32 for AnomalyCLIP and InCTRL,
whose official code has no autocast; ``amp=True/False`` overrides it; fp32 off CUDA), and, with
``out_dir``, after every epoch the method's official checkpoint, a resume state
(``train_state.pt``: exactly the model's ``trainable_state_dict()``, the optimizer and the loss
history) and ``run.json`` (what the run is), all written atomically. A run folder has one writer
(:func:`run_folder`: an ``fcntl.flock`` held for the run by rank 0; a second process gets one line
naming the folder and the holder's pid) and is never a folder of the user's own files (one without
``run.json`` must be empty).

**Multi-GPU.** Under ``torchrun --standalone --nproc_per_node N -m zsadlab train ...`` every
process runs :func:`train`; it joins the process group (``nccl`` on CUDA, ``gloo`` on CPU),
wraps the step in ``DistributedDataParallel`` and lets rank ``r`` take ``batch[r::N]`` of each
global batch - the split ``DistributedSampler(seed=...)`` makes of the seeded permutation - so
the union of the ranks' batches is the single-process batch and ``batch_size`` stays the
global batch. BatchNorm layers (InCTRL's heads) use the statistics of the global batch. Only
rank 0 writes files and shows progress. This module is the only one that knows about ranks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..checkpoints import read_checkpoint
from ..errors import RunError, UserError
from ..methods import Method, Recipe, get_method, method_names
from ..utils import LOCK_FILE, folder_lock, pick_device, save_torch_atomic, seed_everything, write_json_atomic
from .building import autocast, dataset_for, device_of, method_of, precision_of

RESUME_FILE = "train_state.pt"
RUN_FILE = "run.json"
RUN_IDENTITY = ("method", "config", "dataset", "seed", "batch_size", "precision")  # what must match to resume


# --- ranks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes, on ``device``."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it (the process that writes and prints)."""
    return int(os.environ.get("RANK", 0)) == 0


@contextlib.contextmanager
def joined(device: torch.device) -> Iterator[Ranks]:
    """This process's :class:`Ranks`; under torchrun (``WORLD_SIZE`` > 1) the process group is joined
    for the duration (``nccl`` on CUDA, ``gloo`` otherwise) unless the caller already did."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        yield Ranks(0, 1, device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), device)
    finally:
        if owned:
            dist.destroy_process_group()


class GlobalBatchNorm1d(torch.nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch across the ranks.

    torch's ``SyncBatchNorm`` needs a GPU; this does the same with differentiable
    all-reduces (two passes: mean, then variance), so a 2-process run matches a 1-process run.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.tensor([float(x.shape[0])], device=x.device)
        dist.all_reduce(count)
        with warnings.catch_warnings():  # deprecated in favour of a private module; still the public API
            warnings.simplefilter("ignore", FutureWarning)
            mean = dist_nn.all_reduce(x.sum(0)) / count  # [C]
            var = dist_nn.all_reduce(((x - mean) ** 2).sum(0)) / count  # [C] biased, as BatchNorm normalises
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


@contextlib.contextmanager
def global_batchnorm(model: torch.nn.Module, ranks: Ranks) -> Iterator[None]:
    """Make the model's BatchNorm1d layers use global-batch statistics while ``ranks`` is multi-process."""
    layers = [m for m in model.modules() if type(m) is torch.nn.BatchNorm1d] if ranks.world > 1 else []
    for layer in layers:
        layer.__class__ = GlobalBatchNorm1d
    try:
        yield
    finally:
        for layer in layers:
            layer.__class__ = torch.nn.BatchNorm1d


class _Step(torch.nn.Module):
    """The method's training step as a module, so that DDP can wrap it."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe):
        super().__init__()
        self.model, self.recipe = model, recipe

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.recipe.step(self.model, batch)


def _stepper(model, recipe: Recipe, ranks: Ranks) -> torch.nn.Module:
    step = _Step(model, recipe)
    if ranks.world == 1:
        return step
    device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(step, device_ids=device_ids, find_unused_parameters=True)


def _global_mean(values: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """Each loss averaged over the ranks (= the loss of the global batch for batch-mean losses)."""
    if ranks.world == 1:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / ranks.world).tolist()))


# --- run folder ----------------------------------------------------------------------------------


def data_identity(dataset) -> dict:
    """What a training reads, independent of where it lies: the dataset's name (its root folder's name,
    the registry name under a data root), the split, the number of images and a digest of their paths
    relative to the root and their sizes (so a budget subset, or another draw of a synthetic set, is other
    data, and the same data in another clone or data root is the same). Never an absolute path."""
    root = Path(dataset.root)
    files = sorted((Path(s.path).relative_to(root).as_posix(), Path(s.path).stat().st_size) for s in dataset.samples)
    return {"name": root.resolve().name, "split": dataset.split, "images": len(files),
            "files": hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]}


def _identity(spec: Method, model, dataset, seed: int, batch_size: int, precision: str) -> dict:
    """What a run is, as JSON values: method, config, dataset (:func:`data_identity` where the dataset
    has a root and samples), seed, global batch size, precision. No absolute path: a run folder moves
    between machines."""
    config = dataclasses.asdict(model.config) if dataclasses.is_dataclass(model.config) else {}
    data = (data_identity(dataset) if getattr(dataset, "root", None) and hasattr(dataset, "samples")
            else {"split": getattr(dataset, "split", None), "images": len(dataset)})
    return json.loads(json.dumps({"method": spec.name, "config": config, "seed": seed, "batch_size": batch_size,
                                  "precision": precision, "dataset": data}))


def run_record(out_dir: str | Path) -> dict | None:
    """The ``run.json`` of a run folder (what the run is, epochs asked and completed), or None."""
    path = Path(out_dir) / RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def completed_epochs(out_dir: str | Path | None) -> int:
    """How many epochs the run in ``out_dir`` has completed and saved (0 without a run)."""
    record = run_record(out_dir) if out_dir else None
    return int(record.get("completed_epochs", 0)) if record else 0


def _ours(name: str) -> bool:
    """The lock file, a write probe or an atomic write's temporary: what zsadlab leaves in any output folder."""
    return name == LOCK_FILE or name.startswith(".zsadlab-write-check.") or (name.startswith(".") and name.endswith(".tmp"))


def check_run_folder(out_dir: str | Path) -> None:
    """Refuse an existing, non-empty ``out_dir`` that is not a run of this package (no ``run.json``):
    training would overwrite the user's files (``epoch_1.pth``...)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or (out_dir / RUN_FILE).is_file():
        return
    foreign = sorted(p.name for p in out_dir.iterdir() if not _ours(p.name))
    if foreign:
        raise RunError(f"{out_dir} is not empty ({foreign[0]}{' ...' if len(foreign) > 1 else ''}) and holds no run "
                       f"of zsadlab ({RUN_FILE}); training there could overwrite your files. Choose an empty or new "
                       "--out folder.")


@contextlib.contextmanager
def run_folder(out_dir: Path | None, main: bool) -> Iterator[None]:
    """The one-writer lock of a run folder, held by the process that writes it (rank 0), after checking
    that the folder is empty or a run of this package. A run that fails before its first epoch is saved
    leaves nothing behind (not even the folder, if it created it)."""
    if out_dir is not None:
        check_run_folder(out_dir)
    if out_dir is None or not main:
        yield
        return
    created, had_run = not out_dir.exists(), run_record(out_dir) is not None
    with folder_lock(out_dir):
        try:
            yield
        except BaseException:
            if not had_run and completed_epochs(out_dir) == 0:
                _forget_run(out_dir, created)
            raise


def _forget_run(out_dir: Path, created: bool) -> None:
    """Remove what a run that saved no epoch wrote: ``run.json``, the lock file, the folder if it made it."""
    for name in (RUN_FILE, LOCK_FILE):
        (out_dir / name).unlink(missing_ok=True)
    if created and not any(out_dir.iterdir()):
        out_dir.rmdir()


def _check_same_run(out_dir: Path, identity: dict) -> None:
    """Refuse to resume a run folder made by another method, config, dataset, seed, batch size or precision."""
    record = run_record(out_dir)
    if record is None:
        return
    differ = [key for key in RUN_IDENTITY if record.get(key) != identity[key]]
    if differ:
        detail = "; ".join(f"{k}: folder has {record.get(k)!r}, this run {identity[k]!r}" for k in differ[:2])
        raise RunError(f"{out_dir} holds another run ({detail}). Choose another --out folder, or repeat the "
                       "original command to resume that run.")


def _resume(out_dir: Path | None, model, optimizer) -> tuple[int, dict[str, list[float]]]:
    """Load ``train_state.pt`` if present: returns (epochs done, history)."""
    path = out_dir / RESUME_FILE if out_dir else None
    if path is None or not path.exists():
        return 0, {}
    state = read_checkpoint(path, what="training state")
    if not isinstance(state, dict) or "trainable" not in state:
        raise RunError(f"{path} was written by an older zsadlab and cannot be resumed; choose another --out folder "
                       "(its epoch checkpoints still load with --checkpoint)")
    declared = set(model.trainable_state_dict())
    missing = sorted(declared - set(state["trainable"]))
    if missing:
        raise RunError(f"{path} lacks trainable tensors of this model ({', '.join(missing[:3])}"
                       f"{' ...' if len(missing) > 3 else ''}); choose another --out folder")
    model.load_state_dict({k: state["trainable"][k] for k in declared}, strict=False)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), {k: list(v) for k, v in state["history"].items()}


def _trainable_state(model) -> dict[str, torch.Tensor]:
    """What a resume must restore: exactly the model's ``trainable_state_dict()`` (``methods.LearningModel``)."""
    return {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()}


# --- the trainer -------------------------------------------------------------------------------


def _seed_worker(worker_id: int) -> None:
    """Seed a DataLoader worker's NumPy and ``random`` from its torch seed (itself from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_workers(device: torch.device) -> int:
    """DataLoader worker processes: 4 on CUDA (decoding must keep up with the GPU), 0 on the CPU."""
    return 4 if device.type == "cuda" else 0


def _recipe_of(spec: Method) -> Recipe:
    if spec.recipe is None:
        raise UserError(f"{spec.name} learns nothing, so there is nothing to train; train one of "
                        f"{[name for name in method_names() if get_method(name).recipe is not None]}")
    return spec.recipe


def configure_for(model, dataset):
    """Set ``model.config`` to its recipe's config for training on ``dataset`` and return it.

    ``Recipe.for_dataset`` makes the official choices that depend on the training set (VAND: 3
    epochs with mosaics on MVTec AD, else 15); it fills only what the config leaves open, so a
    second call changes nothing and :func:`train` after ``load_or_train`` trains what was keyed.
    """
    model.config = _recipe_of(method_of(model)).for_dataset(model.config, dataset)
    return model.config


def _positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise UserError(f"{name} must be a positive integer, got {value}")


def _warn_if_one_label(spec: Method, dataset) -> None:
    """Warn when every training image has the same label: the losses' other side has nothing to learn from."""
    labels = set(np.unique(getattr(dataset, "labels", [])).tolist())
    if len(labels) == 1:
        kind, other = ("normal", "anomalous") if labels == {0} else ("anomalous", "normal")
        warnings.warn(f"{getattr(dataset, 'root', 'the training set')}: all {len(dataset)} training images are {kind}, "
                      f"so {spec.name}'s losses have no {other} images (or regions) to learn from; train on a set "
                      "with both.", stacklevel=3)


@dataclass(frozen=True)
class Schedule:
    """What a run does: ``epochs`` of seeded global batches of ``batch_size`` (epoch ``e`` drawn with
    ``seed + e``), at most ``max_steps`` per epoch, ``options`` for the method's plan."""

    epochs: int
    batch_size: int
    seed: int
    max_steps: int | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def shares(self, recipe: Recipe, model, dataset, epoch: int, ranks: Ranks) -> list[list]:
        """This rank's share ``batch[rank::world]`` of each global batch of the epoch."""
        plan = recipe.plan(model, dataset, self.batch_size, self.seed + epoch, **self.options)[:self.max_steps]
        return [batch[ranks.rank::ranks.world] for batch in plan if len(batch) >= ranks.world]


def train(model, dataset, epochs: int | None = None, batch_size: int | None = None,
          out_dir: str | Path | None = None, resume: bool = True, seed: int | None = None, device=None,
          amp: bool | None = None, max_steps_per_epoch: int | None = None, progress: bool = True,
          num_workers: int | None = None, lr: float | None = None, betas: tuple[float, float] | None = None,
          **plan_options) -> dict[str, list[float]]:
    """Train ``model`` (built by ``engine.build_model``) on ``dataset`` with its method's recipe.

    ``None`` takes the method's official value: ``epochs`` / ``batch_size`` from the model's
    config (set by the profile), ``seed`` the method's official seed. ``batch_size`` is the
    global batch (split over the processes under torchrun). ``plan_options`` go to the method's
    plan (InCTRL: ``steps_per_epoch``, ``shots``). Returns the loss history: one value per step
    for each scalar loss (``total``, ...) and ``epoch_total`` (mean per epoch). ``amp``: ``None``
    follows the method's precision on CUDA (VAND fp16 autocast + GradScaler, as its official
    ``train.py``; AnomalyCLIP and InCTRL fp32, as theirs), ``True`` / ``False`` override it; off
    CUDA training is fp32 (and says so when fp16 was asked for).
    ``num_workers``: DataLoader worker processes (seeded; default :func:`default_workers`).
    """
    spec = method_of(model)
    recipe = _recipe_of(spec)
    configure_for(model, dataset)  # the recipe's choices for this training set (config fields left None)
    schedule = Schedule(epochs or model.config.epochs, batch_size or model.config.batch_size,
                        spec.seed if seed is None else seed, max_steps_per_epoch, plan_options)
    _positive(epochs=schedule.epochs, batch_size=schedule.batch_size, max_steps_per_epoch=max_steps_per_epoch)
    out_dir = Path(out_dir) if out_dir else None
    device = pick_device(device) if device is not None else device_of(model)
    precision = precision_of(model, device, amp)
    identity = _identity(spec, model, dataset, schedule.seed, schedule.batch_size, precision)
    _warn_if_one_label(spec, dataset)
    with run_folder(out_dir, is_main_process()), joined(device) as ranks:
        if out_dir and resume:
            _check_same_run(out_dir, identity)
        if out_dir and ranks.main and run_record(out_dir) is None:  # the folder is this run's from now on
            write_json_atomic({**identity, "epochs": schedule.epochs, "completed_epochs": 0}, out_dir / RUN_FILE)
        if schedule.batch_size % ranks.world:
            raise UserError(f"the batch size {schedule.batch_size} is the global batch: it must be a multiple of "
                            f"the {ranks.world} processes")
        model.to(ranks.device)
        optimizer = recipe.optimizer(model, lr=lr, betas=betas)
        done, history = _resume(out_dir, model, optimizer) if resume else (0, {})
        history.setdefault("epoch_total", [])
        workers = default_workers(ranks.device) if num_workers is None else num_workers
        scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        # One bar per run (also when every epoch is already done: then it says so), steps counted per epoch.
        bar = tqdm(total=0, desc=f"{spec.name}: epoch {done}/{schedule.epochs}" +
                   (" (complete)" if done >= schedule.epochs else ""), disable=not (progress and ranks.main))
        with bar, global_batchnorm(model, ranks):
            stepper = _stepper(model, recipe, ranks)
            for epoch in range(done, schedule.epochs):
                seed_everything(schedule.seed + epoch)
                shares = schedule.shares(recipe, model, dataset, epoch, ranks)
                loader = DataLoader(recipe.items(dataset), batch_sampler=shares, collate_fn=recipe.collate,
                                    num_workers=workers, worker_init_fn=_seed_worker,
                                    generator=torch.Generator().manual_seed(schedule.seed + epoch))
                bar.total += len(shares)
                bar.set_description(f"{spec.name}: epoch {epoch + 1}/{schedule.epochs}")
                steps = _epoch_losses(model, stepper, optimizer, scaler, loader, bar, ranks)
                for key in steps[0] if steps else ():
                    history.setdefault(key, []).extend(step[key] for step in steps)
                history["epoch_total"].append(float(np.mean([step["total"] for step in steps])))
                if out_dir and ranks.main:
                    _save_epoch(model, recipe, optimizer, history, out_dir, epoch + 1,
                                {**identity, "epochs": schedule.epochs, "completed_epochs": epoch + 1})
                if ranks.world > 1:
                    dist.barrier()
    model.eval()
    return history


def _optimised(stepper, optimizer, scaler, batch, device) -> dict[str, float]:
    """One optimisation step on ``batch`` (fp16 autocast when ``scaler`` is enabled); its scalar losses."""
    with autocast("fp16" if scaler.is_enabled() else "fp32", device):
        losses = stepper(batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {k: float(v.detach()) for k, v in losses.items() if v.dim() == 0}


def train_step(model, optimizer, batch: dict, recipe: Recipe | None = None) -> dict[str, float]:
    """One fp32 optimisation step of the trainer on a collated ``batch``, in train mode, one process:
    the recipe's step (default: the model's method's), ``total`` backpropagated, the optimizer stepped.
    Returns the scalar losses (``total``, ...), as the trainer's history records them."""
    recipe = recipe or _recipe_of(method_of(model))
    model.train()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return _optimised(_Step(model, recipe), optimizer, scaler, batch, device_of(model))


def _epoch_losses(model, stepper, optimizer, scaler, batches, bar, ranks: Ranks) -> list[dict[str, float]]:
    """One epoch of optimisation steps (fp16 autocast when ``scaler`` is enabled), advancing the run's
    progress ``bar``; per step, each scalar loss of the global batch."""
    model.train()
    steps = []
    for batch in batches:
        steps.append(_global_mean(_optimised(stepper, optimizer, scaler, batch, ranks.device), ranks))
        bar.update(1)
        bar.set_postfix(loss=f"{steps[-1]['total']:.4f}")
    return steps


def _save_epoch(model, recipe: Recipe, optimizer, history: dict, out_dir: Path, epoch: int, record: dict) -> None:
    """The official checkpoint of ``epoch``, the resume state and ``run.json``, each written atomically."""
    recipe.save(model, out_dir, epoch)
    save_torch_atomic({"epoch": epoch, "trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
                       "history": history}, out_dir / RESUME_FILE)
    write_json_atomic(record, out_dir / RUN_FILE)


def fit(model, root, epochs: int | None = None, batch_size: int | None = None, out_dir=None,
        seed: int | None = None, shots: int | None = None, **options) -> dict[str, list[float]]:
    """Train ``model`` on the prepared dataset at ``root``, on the split its method trains on
    (AnomalyCLIP: the test split with masks, as the official ``train.py``); see :func:`train`."""
    recipe = _recipe_of(method_of(model))
    data = dataset_for(model, root, split=recipe.training_split, require_masks=recipe.require_masks)
    if shots is not None:
        options["shots"] = shots
    return train(model, data, epochs, batch_size, out_dir=out_dir, seed=seed, **options)
