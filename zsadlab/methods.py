"""The method registry: one :class:`Method` record per method, the only place methods are looked up.

The engine, the CLI and the notebooks ask :func:`get_method` what a method is - how to
build it from a profile, what it learns, and (for a learning method) its optimizer, its
data/step recipe and its checkpoint format - and never branch on a method's name or type.

Adding a method = its module (a model with ``predict(images, class_names) -> (scores [B],
maps [B, S, S] or None)``) plus one :func:`register_method` call here. A method that learns
nothing needs only ``name``, ``learns="nothing"`` and ``build``; ``zsadlab test`` /
``zsadlab predict`` and ``engine.evaluate`` then work unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import anomalyclip, inctrl, vand, winclip
from .anomalyclip import PRESETS, AnomalyCLIP, AnomalyCLIPConfig, preset_config
from .data import collate
from .data.dataset import checked_resize_mode
from .inctrl import InCTRL, InCTRLConfig
from .vand import VAND, VANDConfig
from .winclip import WinCLIP, WinCLIPConfig

LEARNS = ("nothing", "prompts", "heads")


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
class Method:
    """One method: how to build it, its config, what it learns and, if it learns, how.

    ``build(profile, device, seed, **config_changes)`` returns the model in eval mode;
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
    """

    name: str
    learns: str
    build: Callable[..., torch.nn.Module]
    config_class: type | None = None
    seed: int = 0
    with_prompts: Callable[[torch.nn.Module, dict], torch.nn.Module] | None = None
    load: Callable[[torch.nn.Module, Path], torch.nn.Module] | None = None
    recipe: Recipe | None = None
    resize: str = "squash"
    class_scores: Callable[[Any, Any], Any] | None = None

    def __post_init__(self):
        checked_resize_mode(self.resize)
        if self.learns not in LEARNS:
            raise ValueError(f"method {self.name!r}: learns must be one of {LEARNS}, got {self.learns!r}")
        if (self.learns == "nothing") != (self.recipe is None):
            raise ValueError(f"method {self.name!r}: a recipe is needed exactly when the method learns something")

    @property
    def few_shot(self) -> bool:
        """Does the method need normal reference images (sample prompts) to predict?"""
        return self.with_prompts is not None


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


def clip_method_builder(family: str, model_class: type, configure: Callable = lambda config: config) -> Callable:
    """``build(profile, device, seed, **changes)`` for a model ``model_class(clip, config)``.

    The config is ``configure(profile.config(family))`` with ``changes`` applied last; the
    trainable parts are initialised under the run's ``seed`` (official: ``setup_seed`` once
    before the model is built), on the CPU generator, without touching the global RNG.
    """
    def build(profile, device, seed: int, **changes):
        config = dataclasses.replace(configure(profile.config(family)), **changes)
        clip = profile.backbone(family).build(device, seed=seed)
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


ANOMALYCLIP_RECIPE = Recipe(
    optimizer=anomalyclip.make_optimizer,
    plan=shuffled_batches,
    step=anomalyclip.batch_losses,
    save=anomalyclip.save_epoch_checkpoint,
    training_split="test",  # official: the auxiliary dataset's test split, with its masks
    require_masks=True,
)

INCTRL_RECIPE = Recipe(
    optimizer=inctrl.make_optimizer,
    plan=inctrl.training_plan,
    step=inctrl.batch_losses,
    save=inctrl.save_epoch_checkpoint,
    items=inctrl.PromptedQueries,
    collate=inctrl.collate_prompted,
    # official gen_train_json.py: normals from train/good and test/good, anomalies from the test defects
    training_split="inctrl_train",
)

VAND_RECIPE = Recipe(
    optimizer=vand.make_optimizer,
    plan=vand.training_plan,  # shuffled batches, each item with its mosaic draw
    step=vand.batch_losses,
    save=vand.save_epoch_checkpoint,
    items=vand.MosaicItems,
    training_split="test",  # official train.py: the auxiliary dataset's test split, with its masks
    require_masks=True,
    for_dataset=vand.config_for_dataset,  # train.sh: MVTec AD 3 epochs with mosaics, any other set 15
)

# What each AnomalyCLIP preset learns: the hand-written-ensemble baselines learn nothing.
ANOMALYCLIP_LEARNS = {"anomalyclip": "prompts", "anomalyclip_multilayer": "prompts", "coop": "prompts",
                      "clip_ac": "nothing", "clip": "nothing"}


def anomalyclip_method(preset: str) -> Method:
    """The registry entry of AnomalyCLIP preset ``preset`` (official seed 111: train.py ``--seed``)."""
    learns = ANOMALYCLIP_LEARNS[preset]
    learning = learns != "nothing"
    return Method(name=preset, learns=learns, config_class=AnomalyCLIPConfig, seed=111,
                  build=clip_method_builder("anomalyclip", AnomalyCLIP, functools.partial(preset_config, preset)),
                  load=anomalyclip.load_official_checkpoint if learning else None,
                  recipe=ANOMALYCLIP_RECIPE if learning else None)


for preset in PRESETS:
    register_method(anomalyclip_method(preset))

register_method(Method(
    name="inctrl", learns="heads", config_class=InCTRLConfig, seed=10,  # official config: cfg.RNG_SEED = 10
    build=clip_method_builder("inctrl", InCTRL), with_prompts=inctrl.FewShotPredictor, load=inctrl.load_checkpoint,
    recipe=INCTRL_RECIPE, resize="shorter_side_center_crop",  # official test transform: Resize(240) + CenterCrop(240)
))

# WinCLIP (anomalib's implementation; training-free): zero-shot, and WinCLIP+ with k normal references.
register_method(Method(name="winclip", learns="nothing", config_class=WinCLIPConfig,
                       build=clip_method_builder("winclip", WinCLIP)))
register_method(Method(name="winclip_plus", learns="nothing", config_class=WinCLIPConfig,
                       build=clip_method_builder("winclip", WinCLIP), with_prompts=winclip.FewShotPredictor))
# VAND (APRIL-GAN): one set of trained linear layers, used zero-shot and few-shot (official seed 111: train.py).
for name, fewshot_options in (("vand", {}),
                              ("vand_fewshot", dict(with_prompts=vand.FewShotPredictor,
                                                    class_scores=vand.normalise_fewshot_scores))):
    register_method(Method(name=name, learns="heads", config_class=VANDConfig, seed=111,
                           build=clip_method_builder("vand", VAND), load=vand.load_official_checkpoint,
                           recipe=VAND_RECIPE, **fewshot_options))
