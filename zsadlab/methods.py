"""The method registry: one :class:`Method` record per method, the only place methods are looked up.

The engine, the CLI and the notebooks ask :func:`get_method` what a method is - how to
build it on a profile, what it learns, its precision, whether it scores a whole test set at
once, and (for a learning method) its optimizer, its data/step recipe and its checkpoint
format - and never branch on a method's name or type.

This module imports no method. Each method module (``anomalyclip.py``, ``inctrl.py``, ...)
ends with its own :func:`register_method` call and its per-profile :class:`Setup`\\ s, and
``zsadlab/__init__.py`` imports the built-in method modules (one line per module, as timm's
``models/__init__.py``), so the registry holds them however zsadlab is imported. Adding a
method = its module (a model fulfilling :class:`AnomalyModel`, plus :class:`LearningModel`
if it learns) + one import line there; engine, CLI and profiles do not change. A method that
learns nothing needs only ``name``, ``learns="nothing"``, ``build`` and ``setups``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch

from .backbone import Backbone
from .data import collate
from .data.dataset import checked_resize_mode

LEARNS = ("nothing", "prompts", "heads")
PRECISIONS = ("fp32", "fp16")  # fp16: CUDA fp16 autocast, as the official torch.cuda.amp.autocast()


# --- the model protocol ------------------------------------------------------------------------


@runtime_checkable
class AnomalyModel(Protocol):
    """What the engine needs from every method's model (an ``nn.Module`` built by ``Method.build``).

    * ``config`` - the method's frozen config dataclass (defaults: the published setup); it has
      ``image_size`` (the square input side, pixels), and for a learning method ``epochs`` and
      ``batch_size`` (its recipe's defaults).
    * ``predict(images [B, 3, S, S], class_names [B]) -> (scores [B], maps [B, S, S] or None)`` -
      normalised images as ``engine.dataset_for`` makes them; every image scored independently
      of its batch mates. A **transductive** method (``Method.transductive``) is instead called
      with the *whole* unlabeled test set of one class at once - ``images [N, 3, S, S]`` with
      ``N >= Method.min_images`` and ``N`` times the same class name - and may score each image
      against the others; the engine never splits that set into batches (memory: one class at a
      time), and ``zsadlab predict`` hands it the folder's images as one set.
    * few-shot (``Method.with_prompts`` set): ``with_prompts(model, {class: normal images
      [K, 3, S, S]})`` returns the :class:`AnomalyModel` whose ``predict`` compares each query with
      its class's references (the model itself needs only ``config``, and ``predict`` is optional).
    """

    config: Any

    def predict(self, images: torch.Tensor,
                class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@runtime_checkable
class LearningModel(Protocol):
    """What the one trainer needs from the model of a method that learns (besides :class:`AnomalyModel`,
    which it fulfils itself or, few-shot, through ``with_prompts``).

    * ``trainable_state_dict()`` - every tensor training changes (learned parameters and their
      buffers, e.g. BatchNorm statistics), keyed as in ``state_dict()`` (wherever they sit, even
      inside ``clip``): the resume state (``train_state.pt``) saves exactly these and a resume
      restores exactly these (:func:`learned_state` builds it from submodule names);
    * ``train(mode)`` / ``parameters()`` (``nn.Module``); the recipe's ``optimizer`` chooses
      among the parameters, its ``step`` returns the losses and its ``save`` writes the official
      checkpoint, which ``Method.load`` reads.
    """

    config: Any

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...


def learned_state(model: torch.nn.Module, *submodules: str) -> dict[str, torch.Tensor]:
    """``{key: tensor}`` of the named submodules' state dicts (``"prompt_learner"``, ``"clip.visual.adapter"``),
    keyed as in ``model.state_dict()``: a model's :meth:`LearningModel.trainable_state_dict`."""
    return {f"{name}.{key}": value for name in submodules
            for key, value in model.get_submodule(name).state_dict().items()}


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How the one trainer (``engine.train``) trains a learning method.

    * ``optimizer(model, lr=None, betas=None)``: the official optimizer over the trainable parts;
    * ``plan(model, dataset, batch_size, seed, **options)``: one epoch as a list of *global*
      batches of item keys (under DDP, rank ``r`` of ``W`` takes ``batch[r::W]``);
    * ``items(dataset)``: the torch Dataset those keys index; ``collate``: its batch builder;
    * ``step(model, batch)``: the losses of one batch, a dict whose ``"total"`` is differentiable;
    * ``save(model, out_dir, epoch)``: the per-epoch checkpoint in the official format;
    * ``training_split`` / ``require_masks``: which part of a prepared dataset it trains on;
    * ``for_dataset(config, dataset)``: the config to train with on ``dataset``, for the parts of an
      official recipe that depend on the training set (VAND: ``train.sh``'s MVTec AD run), filling
      only what the config leaves open (so applying it twice changes nothing). The trainer applies it
      before training, so the choice is in the run's identity and cache key.
    """

    optimizer: Callable[..., torch.optim.Optimizer]
    plan: Callable[..., list[list]]
    step: Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]]
    save: Callable[[torch.nn.Module, Path, int], Path]
    items: Callable[[Any], torch.utils.data.Dataset] = lambda dataset: dataset
    collate: Callable[[list[dict]], dict] = collate
    training_split: str = "test"
    require_masks: bool = False
    for_dataset: Callable[[Any, Any], Any] = lambda config, dataset: config


@dataclass(frozen=True)
class Setup:
    """What one profile chooses for one method: its CLIP, its config (sizes, blocks, recipe) and the
    batch its evaluation and prediction run at (``eval_batch_size``; results never depend on it)."""

    backbone: Backbone
    config: Any  # the method's config dataclass, e.g. AnomalyCLIPConfig
    eval_batch_size: int = 8


@dataclass(frozen=True)
class Method:
    """One method: how to build it, its config, what it learns and, if it learns, how.

    ``setups``: ``{profile name: Setup}`` - the backbone and config per profile (``"full"``,
    ``"smoke"``; a new profile is one more entry in each method module, no engine change).
    ``build(setup, device, seed, **config_changes)`` returns the model in eval mode;
    ``config_class`` is its config dataclass (its defaults are the published setup);
    ``seed`` is the official seed of its scripts; ``with_prompts(model, {class: images [K, 3, S, S]})``
    is set for few-shot methods, which compare a query with normal reference images: it returns
    a predictor with ``predict`` (evaluation draws prompt sets, prediction needs ``--prompts``);
    ``load(model, path)`` reads a checkpoint in the official format.
    ``resize`` is the official test transform of its images (one of ``data.RESIZE_MODES``:
    ``"squash"`` or InCTRL's ``"shorter_side_center_crop"``), used for datasets and the user's images.
    ``class_scores(scores [N], maps [N, S, S]) -> scores [N]`` is set for a method whose
    official image scores depend on the whole test set of a class (VAND few-shot): evaluation
    applies it once per (class, prompt seed), never :meth:`predict`.
    ``precision``: ``"fp32"`` or ``"fp16"`` (CUDA fp16 autocast) - how its official code trains
    and tests; the engine's default on CUDA (:func:`run_precision`), fp32 elsewhere.
    ``transductive``: its ``predict`` scores one class's whole unlabeled test set at once (of at
    least ``min_images`` images), see :class:`AnomalyModel`.
    ``for_test_set(config, dataset_name) -> config``: the settings its official test script chooses by
    the test set's name (MuSc's RsCIN neighbourhoods on VisA), applied by the evaluation.
    """

    name: str
    learns: str
    build: Callable[..., torch.nn.Module]
    setups: Mapping[str, Setup] = field(default_factory=dict)
    config_class: type | None = None
    seed: int = 0
    with_prompts: Callable[[torch.nn.Module, dict], torch.nn.Module] | None = None
    load: Callable[[torch.nn.Module, Path], torch.nn.Module] | None = None
    recipe: Recipe | None = None
    resize: str = "squash"
    class_scores: Callable[[Any, Any], Any] | None = None
    precision: str = "fp32"
    transductive: bool = False
    min_images: int = 1
    for_test_set: Callable[[Any, str | None], Any] | None = None

    def __post_init__(self):
        checked_resize_mode(self.resize)
        if self.learns not in LEARNS:
            raise ValueError(f"method {self.name!r}: learns must be one of {LEARNS}, got {self.learns!r}")
        if (self.learns == "nothing") != (self.recipe is None):
            raise ValueError(f"method {self.name!r}: a recipe is needed exactly when the method learns something")
        if self.precision not in PRECISIONS:
            raise ValueError(f"method {self.name!r}: precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.min_images < 1:
            raise ValueError(f"method {self.name!r}: min_images must be at least 1, got {self.min_images}")

    @property
    def few_shot(self) -> bool:
        """Does the method need normal reference images (sample prompts) to predict?"""
        return self.with_prompts is not None

    def setup(self, profile: str) -> Setup:
        """The :class:`Setup` this method runs with in profile ``profile`` (its name)."""
        if profile not in self.setups:
            raise ValueError(f"method {self.name!r} has no setup for profile {profile!r}; it has {sorted(self.setups)}")
        return self.setups[profile]


def run_precision(method: Method, device: torch.device | str, amp: bool | None = None) -> str:
    """The precision ``method`` runs at on ``device``: ``"fp16"`` (CUDA fp16 autocast) or ``"fp32"``.

    On CUDA ``amp`` overrides the method's own :attr:`Method.precision` (``None``: follow it;
    CLI ``--amp`` / ``--no-amp``); every other device runs fp32.
    """
    if torch.device(device).type != "cuda":
        return "fp32"
    if amp is None:
        return method.precision
    return "fp16" if amp else "fp32"


# --- the registry --------------------------------------------------------------------------------

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (replacing one of the same name) and return it."""
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {method_names()}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


# --- shared pieces of the registered methods -------------------------------------------------


def clip_model_builder(model_class: type) -> Callable:
    """``build(setup, device, seed, **changes)`` for a model ``model_class(clip, config)``.

    The config is the setup's with ``changes`` applied; the trainable parts are initialised
    under the run's ``seed`` (official: ``setup_seed`` once before the model is built), on the
    CPU generator, without touching the global RNG.
    """
    def build(setup: Setup, device, seed: int, **changes):
        config = dataclasses.replace(setup.config, **changes)
        clip = setup.backbone.build(device, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return model_class(clip, config).to(device).eval()
    return build


def shuffled_batches(model, dataset, batch_size: int, seed: int) -> list[list[int]]:
    """One epoch of a shuffled DataLoader: the seeded permutation of ``randperm(N)`` cut into batches.

    The permutation is the one ``DataLoader(shuffle=True, generator=seed)`` and
    ``DistributedSampler(seed=seed)`` draw, so the union of the ranks' shares of a batch is
    the single-process batch.
    """
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def masked_test_split_recipe(optimizer: Callable, step: Callable, save: Callable) -> Recipe:
    """The recipe of AnomalyCLIP's and VAND's official ``train.py``: shuffled batches
    (:func:`shuffled_batches`) of the auxiliary dataset's test split, every anomaly with its mask."""
    return Recipe(optimizer=optimizer, plan=shuffled_batches, step=step, save=save, training_split="test",
                  require_masks=True)
