"""VAND / APRIL-GAN (Chen et al., CVPR 2023 VAND challenge): CLIP with trained per-layer linear maps.

The method in one picture (official ``test.py`` / ``train.py``, fixtures/vand §4-8):

* **text** - the object-aware prompt ensemble of :mod:`zsadlab.prompts` (7 normal x 5 abnormal
  states in 35 templates), with the class name inserted *verbatim*: APRIL-GAN keeps the
  underscore (``metal_plate`` -> ``metal _ plate``), where AnomalyCLIP's copy of the ensemble
  writes a space. Same sentences, same mean-of-normalised-features, one ``[2, D]`` per class.
* **zero-shot maps** - the raw residual stream after each feature block (no ``ln_post``, no
  ``proj``) goes through one trained ``nn.Linear(W, D)`` per block (:class:`LinearLayers`,
  official ``model.py:LinearLayer``), is L2-normalised and compared with the text at a fixed
  logit scale of 100; the *logits* are upsampled (bilinear, ``align_corners=True``), then the
  softmax; the per-block abnormal probabilities are summed, not smoothed.
* **image score** - ``softmax(100 cos(global, text))[abnormal]``; zero-shot it is the whole score.
* **few-shot** - a memory of the raw block tokens of ``k`` normal references; each test patch's
  ``min(1 - cos)`` to the memory, upsampled the same way and summed over blocks, is added to
  the zero-shot map. The official image score then mixes in the map maxima normalised over the
  class's whole test set: a protocol quirk, :func:`normalise_fewshot_scores`.
* **training** - only the linear layers: focal loss + dice on the abnormal channel per block,
  summed; no image loss (``train.py``); Adam lr 1e-3, betas (0.5, 0.999).

The official model at a size other than the backbone's native one is not the OpenAI model: the
code rebuilds CLIP from a config without ``quick_gelu``, i.e. exact GELU in both towers, with a
bicubic, antialiased positional table (fixtures/vand §2.2). :func:`official_backbone` makes that
model without copying the weights; ViT-L-14-336 at 518 px (the paper) is such a case.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import random
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from . import losses as L
from .backbone import Backbone, block_tokens, freeze, grid_size, pooled_image_embedding, tiny_backbone, tiny_image_size
from .checkpoints import load_submodule_checkpoint
from .data import dataset_name, load_mask, load_rgb
from .data.dataset import normalised_tensor, resized_mask, resized_rgb
from .fewshot import WITH_REPLACEMENT, PromptedPredictor
from .maps import anomaly_map, image_scores, similarity_logits
from .methods import (Method, Setup, clip_model_builder, learned_state, masked_test_split_recipe, register_method,
                      shuffled_batches)
from .prompts import ensemble_sentences, mean_text_feature
from .utils import save_torch_atomic, square_side

LOGIT_SCALE = 100.0  # hard-coded in test.py / train.py; CLIP's logit_scale is not used (fixtures §10.6)
CHECKPOINT_KEY = "trainable_linearlayer"


@dataclass(frozen=True)
class VANDConfig:
    """APRIL-GAN hyper-parameters; defaults are the paper's ViT-L-14-336 at 518 px (``train.sh``).

    ``features``: 1-based blocks whose tokens make the zero-shot maps (official ``features_list``).
    ``fewshot_features``: blocks of the few-shot memory (official ``few_shot_features``; ``None``:
    the same blocks). ``official_build``: at a non-native ``image_size`` run the backbone as the
    official code rebuilds it (exact GELU, bicubic antialiased positions, :func:`official_backbone`);
    ``False`` keeps the given model and resizes positions as :mod:`zsadlab.backbone` does.
    ``epochs``/``batch_size``/``aug_rate``: the training recipe; ``train.sh`` trains twice, both with
    ``--batch_size 8``: on VisA 15 epochs (the checkpoint behind the paper's MVTec AD rows) and on
    MVTec AD 3 epochs with the 2x2 mosaic augmentation at rate 0.2 (``--aug_rate 0.2``,
    ``dataset.py:combine_img``; the checkpoint behind every other row). ``None`` lets the training
    set choose (:func:`config_for_dataset`); a number given here is kept.
    """

    features: tuple[int, ...] = (6, 12, 18, 24)
    image_size: int = 518
    fewshot_features: tuple[int, ...] | None = None
    logit_scale: float = LOGIT_SCALE
    official_build: bool = True
    epochs: int | None = None
    batch_size: int = 8
    aug_rate: float | None = None

    @property
    def memory_features(self) -> tuple[int, ...]:
        return self.fewshot_features or self.features

    def replace(self, **changes) -> "VANDConfig":
        return dataclasses.replace(self, **changes)


# --- the official backbone at a non-native size ----------------------------------------------


def bicubic_positional_embedding(table: torch.Tensor, grid: int) -> torch.Tensor:
    """``[1 + n*n, W]`` -> ``[1 + grid*grid, W]``: open_clip's ``resize_pos_embed`` (fixtures §2.2).

    CLS row kept; patch rows laid out row-major on the native grid, resized bicubic with
    ``antialias=True``, ``align_corners=False``, flattened row-major.
    """
    native = square_side(table.shape[0] - 1)
    patches = table[1:].reshape(1, native, native, -1).permute(0, 3, 1, 2)  # [1, W, n, n]
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([table[:1], patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)])  # [1 + g*g, W]


def native_image_size(clip) -> int:
    """The square size the positional table of ``clip`` was trained for (grid side x patch)."""
    visual = clip.visual
    patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
    return square_side(visual.positional_embedding.shape[0] - 1) * patch


def official_backbone(clip, image_size: int):
    """The CLIP the official code runs at ``image_size`` (``open_clip/factory.py`` of APRIL-GAN).

    At the native size: ``clip`` itself. Otherwise a model that **shares every weight** with
    ``clip`` (nothing is copied or mutated) but has exact ``nn.GELU`` in every block of both
    towers and the bicubic antialiased positional table of :func:`bicubic_positional_embedding`
    - what a fresh CLIP from a config without ``quick_gelu`` plus the resized state dict gives
    (fixtures/vand §2.2). Its text features therefore differ from the native model's.
    """
    if image_size == native_image_size(clip):
        return clip
    shared = {id(t): t for t in itertools.chain(clip.parameters(), clip.buffers())}
    rebuilt = copy.deepcopy(clip, memo=shared)
    for block in itertools.chain(rebuilt.visual.transformer.resblocks, rebuilt.transformer.resblocks):
        block.mlp.gelu = nn.GELU()
    visual = rebuilt.visual
    grid = grid_size(visual, image_size)
    table = bicubic_positional_embedding(clip.visual.positional_embedding.detach(), grid)  # [1 + g*g, W]
    visual.positional_embedding = nn.Parameter(table, requires_grad=False)
    visual.image_size, visual.grid_size = (image_size, image_size), (grid, grid)
    return rebuilt


# --- text --------------------------------------------------------------------------------------


@torch.no_grad()
def vand_text_features(clip, class_name: str) -> torch.Tensor:
    """``[2, D]`` [normal, abnormal] prompt-ensemble features, class name verbatim (underscores kept).

    ``prompt_ensemble.encode_text_with_prompt_ensemble`` (fixtures §4); the official code stacks the
    two as columns ``[D, 2]``, here rows as everywhere in :mod:`zsadlab.maps`.
    """
    normal, abnormal = ensemble_sentences(class_name)
    return torch.stack([mean_text_feature(clip, normal), mean_text_feature(clip, abnormal)])


# --- the learned part -------------------------------------------------------------------------


class LinearLayers(nn.Module):
    """One ``nn.Linear(W, D)`` per feature block, under the official keys ``fc.{i}.weight/bias``.

    Official ``model.py:LinearLayer``: the CLS token is dropped before the projection.
    """

    def __init__(self, width: int, dim: int, count: int):
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(width, dim) for _ in range(count)])

    def forward(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[B, 1+g*g, W]`` per block -> ``[B, g*g, D]`` per block (not normalised)."""
        return [fc(t[:, 1:]) for fc, t in zip(self.fc, tokens)]


# --- maps -------------------------------------------------------------------------------------


def upsampled_grid(values: torch.Tensor, image_size: int) -> torch.Tensor:
    """``[B, g*g, C]`` patch values -> ``[B, C, S, S]``, bilinear with ``align_corners=True``.

    APRIL-GAN's upsampling everywhere (zero-shot logits and few-shot distances, fixtures §10.7);
    :func:`zsadlab.maps.similarity_maps` is AnomalyCLIP's (``align_corners=False``, CLS included).
    """
    batch, patches, channels = values.shape
    grid = square_side(patches)
    if grid * grid != patches:
        raise ValueError(f"{patches} patch tokens do not form a square grid")
    values = values.transpose(1, 2).reshape(batch, channels, grid, grid)  # [B, C, g, g], row-major
    return F.interpolate(values, size=(image_size, image_size), mode="bilinear", align_corners=True)


def nearest_patch_distance(tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``min over memory of (1 - cos)`` for every patch: ``[B, P, W]``, ``[M, W]`` -> ``[B, P]``.

    Official ``test.py`` few-shot branch (sklearn ``cosine_similarity`` then ``min(1 - cos)``),
    over all memory patches regardless of position or reference image (fixtures §7.2).
    """
    cosine = F.normalize(tokens, dim=-1) @ F.normalize(memory, dim=-1).T  # [B, P, M]
    return 1.0 - cosine.amax(dim=-1)


def normalise_fewshot_scores(scores: torch.Tensor | np.ndarray, maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """The official few-shot image scores of **one class's whole test set** (fixtures §7.5, ``test.py``).

    ``scores``: ``[N]`` text probabilities (what :meth:`VAND.predict` returns as scores) and
    ``maps``: ``[N, S, S]`` few-shot maps (or their ``[N]`` maxima) of every test image of the
    class. Returns ``[N]`` float64 ``0.5 * (score + (m - min m) / (max m - min m))`` with
    ``m`` the map maxima. An image's score depends on its class mates, so this runs at
    evaluation time per class, never inside ``predict``. A class whose maxima are all equal
    (or a single image) has no spread; its normalised maxima are taken as 0.
    """
    maps = np.asarray(maps.detach().cpu() if torch.is_tensor(maps) else maps, dtype=np.float32)
    maxima = maps.reshape(maps.shape[0], -1).max(axis=1) if maps.ndim > 1 else maps  # [N]
    spread = maxima.max() - maxima.min()
    scaled = (maxima - maxima.min()) / spread if spread > 0 else np.zeros_like(maxima)
    scores = np.asarray(scores.detach().cpu() if torch.is_tensor(scores) else scores, dtype=np.float64)
    return 0.5 * (scores + scaled.astype(np.float64))


# --- the model --------------------------------------------------------------------------------


class VAND(nn.Module):
    """APRIL-GAN on a frozen open_clip CLIP; only ``trainable_linearlayer`` is trained.

    ``clip`` is the backbone as loaded (OpenAI weights with QuickGELU); with
    ``config.official_build`` and a non-native ``image_size`` the module runs
    :func:`official_backbone` of it, sharing its weights.
    """

    class_independent = False  # the text is the class's prompt ensemble

    def __init__(self, clip, config: VANDConfig = VANDConfig()):
        super().__init__()
        self.config = config
        if config.official_build:
            clip = official_backbone(clip, config.image_size)
        self.clip = freeze(clip).eval()
        width = clip.visual.transformer.resblocks[0].ln_1.weight.shape[0]
        dim = clip.visual.proj.shape[1]
        self.trainable_linearlayer = LinearLayers(width, dim, len(config.features))
        self._text_cache: dict[str, torch.Tensor] = {}
        self._memory_cache: tuple | None = None

    def train(self, mode: bool = True) -> "VAND":
        super().train(mode)
        self.clip.eval()  # the backbone never leaves eval mode
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes (``methods.LearningModel``): the linear layers."""
        return learned_state(self, CHECKPOINT_KEY)

    # --- image side ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, x: torch.Tensor, blocks: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(global [B, D], tokens)``: ``encode_image`` and the raw ``[B, 1+g*g, W]`` stream after
        each of ``blocks`` (official ``VisionTransformer.forward(x, out_layers)``, fixtures §5)."""
        tokens, final = block_tokens(self.clip.visual, x, blocks)
        return pooled_image_embedding(self.clip.visual, final), tokens

    def reference_memory(self, references: torch.Tensor) -> list[torch.Tensor]:
        """Per memory block, the ``[k*g*g, W]`` raw patch tokens of the ``k`` references (fixtures §7.1).

        Cached for the tensor last given (same object, unchanged), so a loop over a class's test
        images encodes its references once.
        """
        cached = self._memory_cache
        if cached is not None and cached[0]() is references and cached[1] == references._version:
            return cached[2]
        device = self.clip.visual.proj.device
        _, tokens = self.encode_image(references.to(device), self.config.memory_features)
        memory = [t[:, 1:].reshape(-1, t.shape[-1]) for t in tokens]  # [k*g*g, W] per block
        self._memory_cache = (weakref.ref(references), references._version, memory)
        return memory

    # --- text side -----------------------------------------------------------------------
    def text_features(self, class_names: str | Sequence[str]) -> torch.Tensor:
        """``[2, D]`` for one class name, ``[B, 2, D]`` for one per image; computed once per class."""
        names = [class_names] if isinstance(class_names, str) else list(class_names)
        device = self.clip.visual.proj.device
        for name in dict.fromkeys(names):
            if name not in self._text_cache:
                # kept fp32 even when first computed under autocast (a later fp32 call can use it)
                self._text_cache[name] = vand_text_features(self.clip, name).float()
        text = torch.stack([self._text_cache[name].to(device) for name in names])  # [B, 2, D]
        return text[0] if isinstance(class_names, str) else text

    # --- maps and scores -----------------------------------------------------------------
    def layer_probabilities(self, tokens: list[torch.Tensor], text: torch.Tensor) -> list[torch.Tensor]:
        """Per feature block, ``[B, 2, S, S]``: softmax of the upsampled logits ``100 cos(fc(t), text)``
        (fixtures §6.2-6.6; the logits are upsampled, the softmax comes after)."""
        projected = self.trainable_linearlayer(tokens)  # [B, g*g, D] per block
        temperature = 1.0 / self.config.logit_scale
        logits = [similarity_logits(p, text, temperature) for p in projected]  # [B, g*g, 2] per block
        return [upsampled_grid(z, self.config.image_size).softmax(dim=1) for z in logits]

    def fewshot_map(self, tokens: list[torch.Tensor], memory: list[torch.Tensor]) -> torch.Tensor:
        """``[B, S, S]``: the upsampled nearest-memory distances summed over the memory blocks (§7.3)."""
        distances = [nearest_patch_distance(t[:, 1:], m)[..., None] for t, m in zip(tokens, memory)]  # [B, P, 1]
        return anomaly_map([upsampled_grid(d, self.config.image_size)[:, 0] for d in distances])

    @torch.no_grad()
    def predict(self, x: torch.Tensor, class_names: str | Sequence[str],
                references: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [B], maps [B, S, S])``; every image independent of its batch mates.

        Zero-shot: the text probability and the sum of the per-block abnormal probabilities (range
        0..L). With ``references`` (``[k, 3, S, S]`` normal images of the class): the few-shot
        distances are added to the map. The score stays the text probability; the official
        few-shot image score needs the whole class, see :func:`normalise_fewshot_scores`.
        """
        memory = self.reference_memory(references) if references is not None else None
        return self.predict_with_memory(x, class_names, memory)

    @torch.no_grad()
    def predict_with_memory(self, x: torch.Tensor, class_names: str | Sequence[str],
                            memory: list[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict` with the references already encoded by :meth:`reference_memory`."""
        return self.predict_with_text(x, self.text_features(class_names), memory)

    @torch.no_grad()
    def predict_with_text(self, x: torch.Tensor, text: torch.Tensor,
                          memory: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_with_memory` with the text features ``[2, D]`` or ``[B, 2, D]`` already computed:
        the image path alone (what :mod:`zsadlab.export` puts in an ONNX graph, the text as constants)."""
        cfg = self.config
        blocks = tuple(dict.fromkeys(cfg.features + (cfg.memory_features if memory is not None else ())))
        g, tokens = self.encode_image(x, blocks)
        by_block = dict(zip(blocks, tokens))
        probabilities = self.layer_probabilities([by_block[b] for b in cfg.features], text)
        maps = anomaly_map([p[:, 1] for p in probabilities])  # [B, S, S]
        if memory is not None:
            maps = maps + self.fewshot_map([by_block[b] for b in cfg.memory_features], memory)
        return image_scores(g, text, 1.0 / cfg.logit_scale), maps

    def losses(self, x: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None,
               class_names: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """The official training objective of one batch (``train.py``, fixtures §8.2).

        Returns ``focal`` and ``dice`` (each ``[L]``, per feature block; dice on the abnormal
        channel only) and ``total`` = their sum. ``labels`` are accepted for the engine's common
        interface and not used: APRIL-GAN has no image-level loss.
        """
        _, tokens = self.encode_image(x, self.config.features)
        probabilities = self.layer_probabilities(tokens, self.text_features(class_names))
        target = (masks > 0.5).to(probabilities[0].dtype)  # [B, S, S], binarised as train.py
        focal = torch.stack([L.focal_loss(p, target) for p in probabilities])
        dice = torch.stack([L.dice_loss(p[:, 1], target) for p in probabilities])
        return {"focal": focal, "dice": dice, "total": (focal + dice).sum()}


class VANDFewShot(PromptedPredictor):
    """VAND few-shot with one fixed reference set per class, behind ``predict(x, class_names)``.

    Each class's references ``[k, 3, S, S]`` are encoded into a memory once
    (:meth:`VAND.reference_memory`). Scores are the text probabilities; evaluation turns them
    into the official few-shot scores per class with :func:`normalise_fewshot_scores`.
    Evaluation draws the references with replacement, as the official ``dataset.py`` does
    (``torch.randint(0, len(data_tmp), (k_shot,))`` over the class's training items).
    """

    draw = WITH_REPLACEMENT

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.model.reference_memory(images)

    def predict_class(self, x: torch.Tensor, class_name: str,
                      memory: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict_with_memory(x, class_name, memory)


# --- training recipe (train.py) -----------------------------------------------------------------


def make_optimizer(model: VAND, lr: float | None = None,
                   betas: tuple[float, float] | None = None) -> torch.optim.Optimizer:
    """The official optimizer: Adam over the linear layers, lr 1e-3, betas (0.5, 0.999) (train.py)."""
    return torch.optim.Adam(model.trainable_linearlayer.parameters(), lr=lr or 1e-3, betas=betas or (0.5, 0.999))


def batch_losses(model: VAND, batch: dict) -> dict[str, torch.Tensor]:
    """The training step's losses of a collated batch (``image``, ``mask``, ``label``, ``class_name``)."""
    device = model.clip.visual.proj.device
    return model.losses(batch["image"].to(device), batch["mask"].to(device), batch["label"], batch["class_name"])


# --- the recipe of the training set and the mosaic augmentation (train.sh, dataset.py) ----------------

# train.sh trains twice, both at --batch_size 8: on MVTec AD for 3 epochs with --aug_rate 0.2, on VisA for
# 15 epochs; train.py reads every set but MVTec AD without the augmentation (VisaDataset).
OFFICIAL_RUNS = {"mvtec": {"epochs": 3, "aug_rate": 0.2}}
OTHER_RUN = {"epochs": 15, "aug_rate": 0.0}
MOSAIC_TILES = 4  # combine_img: a 2 x 2 grid, filled row by row


def config_for_dataset(config: VANDConfig, dataset) -> VANDConfig:
    """``config`` with each recipe field left ``None`` taken from the official run on ``dataset``.

    The run is chosen by the training set's registry name (:func:`zsadlab.data.dataset_name` of its
    root): ``mvtec`` 3 epochs with mosaics at rate 0.2, any other set (synthetic ones included) 15
    epochs without; both at batch 8. Fields already set (a profile's, or the user's) are kept.
    """
    root = getattr(dataset, "root", None)
    run = OFFICIAL_RUNS.get(dataset_name(root) if root is not None else None, OTHER_RUN)
    return config.replace(**{field: value for field, value in run.items() if getattr(config, field) is None})


def item_random(seed: int, index: int) -> random.Random:
    """The random stream of item ``index`` in the epoch drawn with ``seed``.

    One stream per item (the official code draws from Python's global ``random`` in whatever order
    the loader asks), so a draw depends on neither the DataLoader worker nor the DDP rank.
    """
    return random.Random(f"{seed}:{index}")


def defect_folders(samples) -> dict[str, dict[str, list[int]]]:
    """Per class, per defect folder, the indices of ``samples`` in it: folders and files in sorted order
    (``combine_img`` lists ``<class>/test`` and the drawn folder with ``os.listdir``)."""
    listing: dict[str, dict[str, list[int]]] = {}
    for index, sample in sorted(enumerate(samples), key=lambda p: (p[1].class_name, p[1].defect, p[1].path.name)):
        listing.setdefault(sample.class_name, {}).setdefault(sample.defect, []).append(index)
    return listing


def mosaic_tiles(rng: random.Random, folders: dict[str, list[int]], aug_rate: float) -> tuple[int, ...]:
    """One item's draw by the official rule (``MVTecDataset.__getitem__`` and ``combine_img``).

    With probability ``aug_rate`` (``rng.random() < aug_rate``) four tiles of the item's class, each
    a defect folder of ``folders`` drawn uniformly, then a file in it drawn uniformly
    (``random.choice`` twice), in that order; otherwise ``()``: the item itself.
    """
    if not rng.random() < aug_rate:
        return ()
    defects = list(folders)
    tiles = []
    for _ in range(MOSAIC_TILES):
        defect = rng.choice(defects)
        tiles.append(rng.choice(folders[defect]))
    return tuple(tiles)


def training_plan(model: VAND, dataset, batch_size: int, seed: int) -> list[list[tuple[int, tuple[int, ...]]]]:
    """One epoch: the shuffled batches of ``shuffled_batches``, each key ``(index, tiles)`` with the
    item's :func:`mosaic_tiles` at ``config.aug_rate`` (drawn from :func:`item_random`), so that every
    rank and worker builds the same mosaic."""
    listing, rate = defect_folders(dataset.samples), model.config.aug_rate or 0.0
    return [[(index, mosaic_tiles(item_random(seed, index), listing[dataset.samples[index].class_name], rate))
             for index in batch] for batch in shuffled_batches(model, dataset, batch_size, seed)]


def mosaic(tiles: Sequence[np.ndarray], cell: tuple[int, int]) -> np.ndarray:
    """Four ``[h_i, w_i(, C)]`` arrays -> ``[2H, 2W(, C)]`` with ``cell = (H, W)``.

    Tile ``i`` goes to row ``i // 2``, column ``i % 2``, pasted in order as ``combine_img``'s
    ``Image.paste``: a larger tile is clipped at the canvas and overlapped by the next, a smaller
    one leaves zeros.
    """
    height, width = cell
    canvas = np.zeros((2 * height, 2 * width) + tiles[0].shape[2:], dtype=tiles[0].dtype)
    for i, tile in enumerate(tiles):
        top, left = (i // 2) * height, (i % 2) * width
        region = canvas[top:top + tile.shape[0], left:left + tile.shape[1]]
        region[...] = tile[:region.shape[0], :region.shape[1]]
    return canvas


def mosaic_pair(samples: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """``combine_img`` of four samples at their native size: the ``[2H, 2W, 3]`` uint8 image and the
    ``[2H, 2W]`` {0, 1} mask, ``(H, W)`` the first image's (a normal tile's mask is zeros)."""
    images = [load_rgb(sample.path) for sample in samples]  # [h, w, 3] each
    masks = [load_mask(sample.mask_path) if sample.mask_path else np.zeros(image.shape[:2], np.uint8)
             for sample, image in zip(samples, images)]  # [h, w] each
    cell = images[0].shape[:2]
    return mosaic(images, cell), mosaic(masks, cell)


class MosaicItems(torch.utils.data.Dataset):
    """The items behind :func:`training_plan`'s keys ``(index, tiles)``.

    ``dataset[index]``, whose image and mask are replaced by :func:`mosaic_pair` of ``tiles`` when
    there are any, then resized and normalised as the dataset does (official: ``combine_img`` before
    ``transform`` / ``target_transform``). Label, class and path stay the drawn item's, as in the
    official code; VAND's loss reads only images, masks and class names.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, tuple[int, ...]]) -> dict:
        index, tiles = key
        item, data = self.dataset[index], self.dataset
        if tiles:
            image, mask = mosaic_pair([data.samples[t] for t in tiles])
            item["image"] = normalised_tensor(resized_rgb(image, data.image_size, data.resize), data.mean, data.std)
            item["mask"] = torch.from_numpy(resized_mask(mask, data.image_size, data.resize)).float()  # [S, S]
        return item


# --- official preprocessing of masks ------------------------------------------------------------


def official_mask(mask: np.ndarray, image_size: int) -> torch.Tensor:
    """``[H, W]`` {0, 255} uint8 -> ``[S, S]`` float {0, 1}: PIL bilinear resize, ``ToTensor``, ``> 0.5``.

    ``train.py``'s ``target_transform`` followed by its threshold (fixtures §9); pixels on a
    defect's edge can differ from a nearest-neighbour resize.
    """
    resized = np.asarray(Image.fromarray(mask).resize((image_size, image_size), Image.BILINEAR))
    return (torch.from_numpy(resized.astype(np.float32) / 255.0) > 0.5).float()


# --- official checkpoints ----------------------------------------------------------------------


def load_official_checkpoint(model: VAND, path: str | Path) -> VAND:
    """Load an official ``{"trainable_linearlayer": state_dict}`` file (e.g. ``epoch_15.pth``) safely."""
    load_submodule_checkpoint(model.trainable_linearlayer, path, CHECKPOINT_KEY, "VAND checkpoint",
                              "Check the backbone (width, embed dim) and the number of features against the "
                              "checkpoint.")
    return model


def save_official_checkpoint(model: VAND, path: str | Path) -> Path:
    """Write ``{"trainable_linearlayer": state_dict}`` atomically, the official format."""
    state = {k: v.detach().cpu() for k, v in model.trainable_linearlayer.state_dict().items()}
    return save_torch_atomic({CHECKPOINT_KEY: state}, path)


def save_epoch_checkpoint(model: VAND, out_dir: str | Path, epoch: int) -> Path:
    """``out_dir/epoch_<epoch>.pth``, the official file name (train.py, ``--save_freq 1``)."""
    return save_official_checkpoint(model, Path(out_dir) / f"epoch_{epoch}.pth")


# --- registration: one set of trained linear layers, used zero-shot and few-shot ---------------------

# official train.py, with train.sh's choice by training set and dataset.py's mosaics (shuffled keys with their draw)
RECIPE = dataclasses.replace(masked_test_split_recipe(make_optimizer, batch_losses, save_epoch_checkpoint),
                             plan=training_plan, items=MosaicItems, for_dataset=config_for_dataset)

SETUPS: dict[str, Setup] = {
    # As its paper: ViT-L-14-336 at 518 px, blocks 6/12/18/24, the official model build.
    "full": Setup(Backbone("ViT-L-14-336", "openai"), VANDConfig()),
    "smoke": Setup(tiny_backbone("vit14-112"),
                   # batch 8 and the mosaic rate of the official run on the training set; one epoch, to stay fast
                   VANDConfig(features=(2, 4, 6, 8), image_size=tiny_image_size("vit14-112"), epochs=1),
                   eval_batch_size=4),
}
SETUPS["lab"] = SETUPS["full"]  # the lab profile: the full setup, within its budget (profiles.py)

# Official seed 111 (train.py); train.py and test.py run under torch.cuda.amp.autocast(): fp16 on CUDA.
for _name, _fewshot in (("vand", {}),
                        ("vand_fewshot", dict(with_prompts=VANDFewShot, class_scores=normalise_fewshot_scores))):
    register_method(Method(name=_name, learns="heads", setups=SETUPS, config_class=VANDConfig, seed=111,
                           build=clip_model_builder(VAND), load=load_official_checkpoint, recipe=RECIPE,
                           precision="fp16", **_fewshot))
