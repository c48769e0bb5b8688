"""InCTRL: in-context residual learning with few-shot normal sample prompts.

Zhu & Pang, "Toward Generalist Anomaly Detection via In-context Residual Learning
with Few-shot Sample Prompts", CVPR 2024. A query image is compared with ``K``
normal images of its class (the *sample prompts*) through a frozen CLIP:

1. **Patch-level residuals** (paper: multi-layer patch-level residual learning):
   each query patch token's distance to its nearest prompt patch token, at the
   blocks in ``config.layers``, averaged over the layers -> a ``[P]`` map; its max
   is the fine-grained score.
2. **Image-level residual** (paper: image-level residual learning): the adapted
   prompt image tokens (mean over shots) minus the adapted query token, scored by
   the head ``diff_head_ref``.
3. **Text prior** (paper: text prompt-guided features): the probability of
   "anomaly" from CLIP's zero-shot prompt ensemble of the class name.
4. **Holistic score**: text prior + image residual score + patch map, scored by
   ``diff_head``; final score = (holistic score + fine-grained score) / 2.

Every detail of the official code (commit cc535d0) that changes numbers is pinned
by ``tests/fixtures/inctrl/FIXTURES.md`` and cited below as "fixtures §x". Two
deliberate differences, neither changing a per-image result:

* per-image semantics at every batch size: the official code mixes layers, images
  and shots when ``b > 1`` (fixtures §3.8); we reproduce its ``b = 1`` results;
* the text prior is encoded once per class name and cached, instead of for every
  query (88 % of the official forward time, fixtures §8).

Shapes: ``B`` queries, ``K`` shots, ``L`` layers, ``P`` patches (225 at 240 px),
``W`` vision width, ``D`` joint embedding dim.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fewshot
from .backbone import Backbone, block_tokens, freeze, grid_size, pooled_image_embedding, tiny_backbone, tiny_image_size
from .checkpoints import read_checkpoint
from .data import collate
from .data.layout import INCTRL_TRAIN
from .errors import CheckpointError, UserError
from .methods import Method, Recipe, Setup, clip_model_builder, learned_state, register_method
from .prompts import inctrl_prompt_texts, mean_text_feature
from .utils import save_torch_atomic

HEAD_PREFIXES = ("adapter.", "diff_head.", "diff_head_ref.")
BACKBONE_PREFIX = "clip."
NOT_IN_OFFICIAL = ("logit_scale",)  # open_clip's learned temperature; InCTRL has none (fixtures §1)


@dataclass(frozen=True)
class InCTRLConfig:
    """InCTRL hyper-parameters; the defaults are the paper's ViT-B-16-plus-240 setup."""

    layers: tuple[int, ...] = (7, 9, 11)  # 1-based blocks whose patch tokens are compared (fixtures §3.1)
    image_size: int = 240  # 15 x 15 = 225 patches with patch 16
    text_scale: float = 100.0  # fixed logit scale of the text prior (fixtures §3.6)
    adapter_reduction: int = 4  # Adapter(D -> D/4 -> D) (fixtures §3.4)
    head_widths: tuple[int, int] = (128, 64)  # hidden widths of diff_head / diff_head_ref (fixtures §3.5)
    focal_gamma: float = 2.0  # BinaryFocalLoss(gamma=2, alpha=1) (fixtures §3.9)
    shots: int = 2  # training prompts per query (official default)
    lr: float = 1e-3  # AdamW, betas (0.9, 0.999), eps 1e-8 (fixtures §3.9)
    weight_decay: float = 0.01
    batch_size: int = 16  # 8 normal + 8 anomalous per training batch (cfg.TRAIN.BATCH_SIZE)
    epochs: int = 10  # official engine_IC.train: range(start_epoch, 10)
    steps_per_epoch: int = 100  # official BalancedBatchSampler: 100 batches per epoch


# ---------------------------------------------------------------------------
# Trainable parts (official module and parameter names)
# ---------------------------------------------------------------------------


class Adapter(nn.Module):
    """``Linear(D, D/r) -> ReLU -> Linear(D/r, D) -> ReLU``, no bias, no skip (fixtures §3.4)."""

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(dim // reduction, dim, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ScoreHead(nn.Module):
    """The official ``TransformerBasicHead``: an MLP from a feature vector to a score in (0, 1).

    ``projection1 -> ReLU -> bn2 -> projection2 -> ReLU -> bn3 -> projection3 -> sigmoid``
    (BatchNorm *after* ReLU). ``bn1`` exists in the official model, and so in its
    checkpoints, but is never applied (fixtures §3.5); it is kept so they load.
    """

    def __init__(self, dim: int, widths: tuple[int, int] = (128, 64)):
        super().__init__()
        hidden, narrow = widths
        self.bn1 = nn.BatchNorm1d(dim)  # unused, official checkpoints carry it
        self.projection1 = nn.Linear(dim, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.projection2 = nn.Linear(hidden, narrow)
        self.bn3 = nn.BatchNorm1d(narrow)
        self.projection3 = nn.Linear(narrow, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim]`` -> ``[B]`` scores in (0, 1)."""
        x = self.bn2(F.relu(self.projection1(x)))  # [B, hidden]
        x = self.bn3(F.relu(self.projection2(x)))  # [B, narrow]
        return torch.sigmoid(self.projection3(x)).squeeze(-1)  # [B]


# ---------------------------------------------------------------------------
# The pieces of the method, as plain functions
# ---------------------------------------------------------------------------


class ImageFeatures(NamedTuple):
    """What InCTRL takes from the frozen image tower for a batch of ``N`` images."""

    patch_tokens: torch.Tensor  # [N, L, P, W] raw residual stream after each layer, CLS dropped
    embedding: torch.Tensor  # [N, D] CLIP image embedding (encode_image), not normalised


def patch_residual_maps(query_tokens: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
    """Per-layer patch residuals ``[B, L, P]``: each query patch's distance to its nearest prompt patch.

    ``query_tokens``: ``[B, L, P, W]``; ``prompt_tokens``: ``[B or 1, L, K*P, W]``, the
    patches of all K shots pooled (any shot, any position). The distance is the
    official ``0.5 * (1 - cos)`` (the paper writes ``1 - cos``), on L2-normalised raw
    tokens (fixtures §3.3). Min of a decreasing function = that function of the max
    cosine, so one batched matmul and one max per layer do it all.
    """
    query = F.normalize(query_tokens, dim=-1)  # [B, L, P, W]
    prompts = F.normalize(prompt_tokens, dim=-1)  # [B|1, L, K*P, W]
    cosine = query @ prompts.transpose(-1, -2)  # [B, L, P, K*P]
    return 0.5 * (1.0 - cosine.amax(dim=-1))  # [B, L, P]


def image_residual(adapter: nn.Module, query_embedding: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """Image-level residual ``[B, D]`` = mean over shots of adapter(prompt) - adapter(query).

    ``query_embedding``: ``[B, D]``; ``prompt_embeddings``: ``[B or 1, K, D]``. The
    adapter is applied to each shot before averaging, and the sign is *prompt minus
    query*, as in the official code (fixtures §3.4).
    """
    prompts = adapter(prompt_embeddings).mean(dim=1)  # [B|1, D]
    return prompts - adapter(query_embedding)  # [B, D]


@torch.no_grad()
def class_text_features(clip: nn.Module, class_name: str) -> torch.Tensor:
    """``[2, D]`` [normal, anomaly] text features of ``class_name`` (fixtures §3.6).

    Each prompt of :func:`~zsadlab.prompts.inctrl_prompt_texts` is encoded and
    L2-normalised; each list is averaged and re-normalised.
    """
    normal, anomaly = inctrl_prompt_texts(class_name)
    return torch.stack([mean_text_feature(clip, normal), mean_text_feature(clip, anomaly)])


def text_logits(image_embedding: torch.Tensor, text_features: torch.Tensor, scale: float) -> torch.Tensor:
    """``[B, 2]`` = ``scale * cos(image, [normal, anomaly])`` with a fixed scale (fixtures §3.6).

    ``image_embedding``: ``[B, D]`` (not normalised); ``text_features``: ``[B, 2, D]``.
    """
    image = scale * F.normalize(image_embedding, dim=-1)  # [B, D]
    return (image.unsqueeze(1) @ text_features.transpose(1, 2)).squeeze(1)  # [B, 2]


def focal_loss_on_scores(scores: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """The official ``BinaryFocalLoss(logits=True)`` applied to scores already in (0, 1).

    The official code feeds sigmoid outputs to a loss that applies the sigmoid
    again (fixtures §3.9): ``mean((1 - exp(-bce))**gamma * bce)`` with
    ``bce = BCEWithLogits(scores, labels)``, alpha = 1.
    """
    bce = F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype), reduction="none")  # [B]
    return ((1.0 - torch.exp(-bce)) ** gamma * bce).mean()


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


@dataclass
class InCTRLOutput:
    """Scores and maps of one forward pass, per query image."""

    final_score: torch.Tensor  # [B] (holistic_score + fine_grained_score) / 2, what the test evaluates
    image_residual_score: torch.Tensor  # [B] diff_head_ref(image residual), the second loss term
    patch_map: torch.Tensor  # [B, P] patch residuals averaged over layers
    text_score: torch.Tensor  # [B] text prior, P("anomaly")
    holistic_map: torch.Tensor  # [B, P] text_score + image_residual_score + patch_map
    holistic_score: torch.Tensor  # [B] diff_head(holistic_map)
    fine_grained_score: torch.Tensor  # [B] max of patch_map
    layer_patch_maps: torch.Tensor  # [B, L, P] patch residuals per layer
    image_residual: torch.Tensor  # [B, D] adapted prompts (mean) - adapted query


class InCTRL(nn.Module):
    """InCTRL on a frozen open_clip CLIP; only ``adapter``, ``diff_head`` and ``diff_head_ref`` train.

    ``model(queries, prompts, class_names)`` with queries ``[B, 3, S, S]``, prompts
    ``[B, K, 3, S, S]`` (per query) or ``[K, 3, S, S]`` (shared, encoded once) and
    class names (one string, or ``B`` strings) returns an :class:`InCTRLOutput`.
    Results are per image at every batch size (the official ``b = 1`` behaviour).
    ``prompts`` may also be :meth:`prompt_features` computed earlier, so that an
    evaluation loop encodes a class's fixed prompt set once for all its batches.
    """

    def __init__(self, clip: nn.Module, config: InCTRLConfig = InCTRLConfig()):
        super().__init__()
        self.config = config
        self.clip = freeze(clip).eval()
        embed_dim = clip.visual.output_dim
        patches = grid_size(clip.visual, config.image_size) ** 2
        self.adapter = Adapter(embed_dim, config.adapter_reduction)
        self.diff_head = ScoreHead(patches, config.head_widths)
        self.diff_head_ref = ScoreHead(embed_dim, config.head_widths)
        self._text_cache: dict[str, torch.Tensor] = {}  # class name -> [2, D]

    def train(self, mode: bool = True) -> "InCTRL":
        """Train mode for the heads only; the frozen backbone stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes (``methods.LearningModel``): the three heads, BatchNorm statistics included."""
        return learned_state(self, *(prefix.rstrip(".") for prefix in HEAD_PREFIXES))

    # -- backbone ---------------------------------------------------------------

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> ImageFeatures:
        """Patch tokens after ``config.layers`` and the image embedding of ``[N, 3, S, S]`` images.

        Raw residual stream (no ``ln_post``, no ``proj``), 1-based blocks, CLS dropped,
        patches row-major (fixtures §3.1); embedding = ``encode_image`` (fixtures §3.2).
        """
        if images.shape[-1] != self.config.image_size:
            raise ValueError(f"images are {images.shape[-1]} px, the model expects {self.config.image_size}"
                             " (diff_head's input is the patch map)")
        taken, final = block_tokens(self.clip.visual, images, self.config.layers)  # L x [N, 1+P, W]
        tokens = torch.stack([t[:, 1:] for t in taken], dim=1)  # [N, L, P, W]
        return ImageFeatures(tokens, pooled_image_embedding(self.clip.visual, final))  # [N, D]

    def prompt_features(self, prompts: torch.Tensor) -> ImageFeatures:
        """Features of the sample prompts, laid out per query: tokens ``[n, L, K*P, W]``, embeddings ``[n, K, D]``.

        ``prompts``: ``[B, K, 3, S, S]`` (``n = B``) or shared ``[K, 3, S, S]`` (``n = 1``,
        encoded once for the whole batch). Shots are concatenated along the patch
        axis *per layer*: the layout the official ``reshape`` gets wrong for ``b > 1``.
        """
        if prompts.dim() == 4:
            prompts = prompts.unsqueeze(0)  # [1, K, 3, S, S]
        n, shots = prompts.shape[:2]
        features = self.image_features(prompts.flatten(0, 1))  # tokens [n*K, L, P, W]
        tokens = features.patch_tokens.unflatten(0, (n, shots))  # [n, K, L, P, W]
        tokens = tokens.transpose(1, 2).flatten(2, 3)  # [n, L, K*P, W]
        return ImageFeatures(tokens, features.embedding.unflatten(0, (n, shots)))  # [n, K, D]

    def text_features(self, class_name: str) -> torch.Tensor:
        """``[2, D]`` text prior features of ``class_name``, encoded once and cached per model.

        The cache follows the model: if the model moved device, the cached tensor is
        moved (not re-encoded). :func:`load_official_state_dict` clears it.
        """
        device = self.clip.text_projection.device
        if class_name not in self._text_cache:
            # kept fp32 even when first computed under autocast (a later fp32 call can use it)
            self._text_cache[class_name] = class_text_features(self.clip, class_name).float()
        if self._text_cache[class_name].device != device:
            self._text_cache[class_name] = self._text_cache[class_name].to(device)
        return self._text_cache[class_name]

    def clear_text_cache(self) -> None:
        """Forget the cached text features (call after changing the text tower's weights)."""
        self._text_cache.clear()

    # -- forward ------------------------------------------------------------------

    def forward(self, queries: torch.Tensor, prompts: torch.Tensor | ImageFeatures,
                class_names: str | Sequence[str]) -> InCTRLOutput:
        batch = queries.shape[0]
        names = [class_names] * batch if isinstance(class_names, str) else list(class_names)
        if len(names) != batch:
            raise ValueError(f"got {len(names)} class names for {batch} query images")
        if not isinstance(prompts, ImageFeatures):
            prompts = self.prompt_features(prompts)  # tokens [B|1, L, K*P, W], embedding [B|1, K, D]
        if prompts.embedding.shape[0] not in (1, batch):
            raise ValueError(f"prompts for {prompts.embedding.shape[0]} queries given with {batch} query images")

        query = self.image_features(queries)  # tokens [B, L, P, W], embedding [B, D]

        layer_maps = patch_residual_maps(query.patch_tokens, prompts.patch_tokens)  # [B, L, P]
        patch_map = layer_maps.mean(dim=1)  # [B, P]
        fine_grained_score = patch_map.amax(dim=1)  # [B]

        residual = image_residual(self.adapter, query.embedding, prompts.embedding)  # [B, D]
        image_residual_score = self.diff_head_ref(residual)  # [B]

        text = torch.stack([self.text_features(name) for name in names])  # [B, 2, D]
        text_score = text_logits(query.embedding, text, self.config.text_scale).softmax(dim=-1)[:, 1]  # [B]

        holistic_map = text_score[:, None] + image_residual_score[:, None] + patch_map  # [B, P] (fixtures §3.7)
        holistic_score = self.diff_head(holistic_map)  # [B]
        return InCTRLOutput(
            final_score=(holistic_score + fine_grained_score) / 2,
            image_residual_score=image_residual_score,
            patch_map=patch_map,
            text_score=text_score,
            holistic_map=holistic_map,
            holistic_score=holistic_score,
            fine_grained_score=fine_grained_score,
            layer_patch_maps=layer_maps,
            image_residual=residual,
        )

    def loss_terms(self, out: InCTRLOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two focal terms of the official loss: on the final and the image-residual scores."""
        gamma = self.config.focal_gamma
        return {
            "loss_final": focal_loss_on_scores(out.final_score, labels, gamma),
            "loss_image_residual": focal_loss_on_scores(out.image_residual_score, labels, gamma),
        }

    def loss(self, out: InCTRLOutput, labels: torch.Tensor) -> torch.Tensor:
        """The official training loss: sum of the two focal terms (fixtures §3.9)."""
        return sum(self.loss_terms(out, labels).values())


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def make_optimizer(model: InCTRL, lr: float | None = None,
                   betas: tuple[float, float] | None = None) -> torch.optim.Optimizer:
    """The official optimizer: AdamW over the trainable parameters, lr 1e-3, betas (0.9, 0.999),
    wd 0.01 (fixtures §3.9); ``lr`` / ``betas`` override the config's."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=lr or model.config.lr, betas=betas or (0.9, 0.999), eps=1e-8,
                             weight_decay=model.config.weight_decay)


class PromptedQueries(torch.utils.data.Dataset):
    """Training items keyed ``(query, prompt_1, ..., prompt_K)``: the query and its K normal prompt images."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        item = dict(self.dataset[key[0]])
        item["prompts"] = torch.stack([self.dataset[i]["image"] for i in key[1:]])  # [K, 3, S, S]
        return item


def training_plan(model: InCTRL, dataset, batch_size: int, seed: int, steps_per_epoch: int | None = None,
                  shots: int | None = None) -> list[list[tuple[int, ...]]]:
    """One epoch of the official ``BalancedBatchSampler`` (fixtures §3.9): ``steps`` batches of
    ``(query, prompts...)`` keys, half normal then half anomalous, each query with ``shots``
    seeded normal prompts of its class (never itself)."""
    rng = np.random.default_rng(seed)
    labels = [s.label for s in dataset.samples]
    names = [s.class_name for s in dataset.samples]
    missing = [kind for kind, label in (("normal", 0), ("anomalous", 1)) if label not in labels]
    if missing:
        raise UserError(f"{getattr(dataset, 'root', 'the training set')}: InCTRL trains on balanced batches of normal "
                        f"and anomalous images, but this set has no {' or '.join(missing)} ones; train on a set with "
                        "both (its test split's defects count).")
    steps, shots = steps_per_epoch or model.config.steps_per_epoch, shots or model.config.shots
    batches = fewshot.balanced_batches(labels, batch_size, steps, rng)
    return [[(query, *prompts) for query, prompts in zip(batch, fewshot.sample_prompt_indices(
        batch, labels, names, shots, rng).tolist())] for batch in batches]


def collate_prompted(items: list[dict]) -> dict:
    """:func:`~zsadlab.data.collate` plus ``prompts`` ``[B, K, 3, S, S]``."""
    return {**collate(items), "prompts": torch.stack([it["prompts"] for it in items])}


def batch_losses(model: InCTRL, batch: dict) -> dict[str, torch.Tensor]:
    """The official loss of a collated training batch: ``total`` = sum of the two focal terms."""
    device = model.clip.text_projection.device
    out = model(batch["image"].to(device), batch["prompts"].to(device), batch["class_name"])
    terms = model.loss_terms(out, batch["label"].to(device))
    return {"total": sum(terms.values()), **terms}


class InCTRLFewShot(fewshot.PromptedPredictor):
    """InCTRL with one fixed prompt set per class, behind the engine's ``predict`` interface.

    ``predict(x, class_names)`` returns InCTRL's final score and its patch residual map,
    bilinearly upsampled to the image size for pictures (InCTRL reports no pixel metrics).
    Each class's prompt set ``[K, 3, S, S]`` is encoded once (:meth:`InCTRL.prompt_features`).
    """

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        return self.model.prompt_features(images.to(self.clip.text_projection.device))

    def predict_class(self, x: torch.Tensor, class_name: str,
                      memory: ImageFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x, memory, class_name)
        grid = int(round(out.patch_map.shape[1] ** 0.5))
        patch = out.patch_map.view(-1, 1, grid, grid)  # [b, 1, g, g]
        return out.final_score, F.interpolate(patch, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


# ---------------------------------------------------------------------------
# Official-format state dicts and checkpoints
# ---------------------------------------------------------------------------


def _official_key(key: str) -> str:
    return key if key.startswith(HEAD_PREFIXES) else key.removeprefix(BACKBONE_PREFIX)


def _model_key(official_key: str) -> str:
    return official_key if official_key.startswith(HEAD_PREFIXES) else BACKBONE_PREFIX + official_key


def official_state_dict(model: InCTRL) -> dict[str, torch.Tensor]:
    """``{official key: tensor}``: backbone under open_clip's names, heads under ``adapter.*``,
    ``diff_head.*``, ``diff_head_ref.*`` - the layout of the official ``InCTRL.state_dict()``."""
    state = {_official_key(k): v for k, v in model.state_dict().items()}
    return {k: v for k, v in state.items() if k not in NOT_IN_OFFICIAL}


def load_official_state_dict(model: InCTRL, state_dict: Mapping[str, "torch.Tensor | np.ndarray"]) -> InCTRL:
    """Load an official InCTRL state dict (tensors or NumPy arrays; fp16 is cast to fp32).

    Every key of :func:`official_state_dict` must be present and no other
    (``logit_scale`` is tolerated); otherwise a ``KeyError`` names them.
    The text-feature cache is cleared.
    """
    expected = set(official_state_dict(model))
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected - set(NOT_IN_OFFICIAL))
    if missing or unexpected:
        raise KeyError(
            f"not an InCTRL state dict for this model: {len(missing)} missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, {len(unexpected)} unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    tensors = {}
    for key, value in state_dict.items():
        tensor = value if torch.is_tensor(value) else torch.from_numpy(np.asarray(value))
        tensors[_model_key(key)] = tensor.float() if tensor.is_floating_point() else tensor
    model.load_state_dict(tensors, strict=False)
    model.clear_text_cache()
    return model


def save_checkpoint(model: InCTRL, path: str | os.PathLike, epoch: int | None = None) -> Path:
    """Write ``{"model_state": official_state_dict, "epoch": epoch}`` atomically (the official file layout)."""
    return save_torch_atomic({"model_state": official_state_dict(model), "epoch": epoch}, path)


def save_epoch_checkpoint(model: InCTRL, out_dir: str | os.PathLike, epoch: int) -> Path:
    """``out_dir/checkpoint_<epoch>.pyth``, the official per-epoch file name (engine_IC.train)."""
    return save_checkpoint(model, Path(out_dir) / f"checkpoint_{epoch}.pyth", epoch=epoch)


def load_checkpoint(model: InCTRL, path: str | os.PathLike) -> InCTRL:
    """Load an official-format checkpoint (``{"model_state": ...}`` or a bare state dict) into ``model``.

    A ``module.`` prefix (checkpoints saved from multi-GPU training) is removed. Problems raise
    :class:`~zsadlab.errors.CheckpointError` naming the file.
    """
    obj = read_checkpoint(path, what="InCTRL checkpoint")
    if not isinstance(obj, dict):
        raise CheckpointError(f"InCTRL checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    state = obj.get("model_state", obj)
    try:
        return load_official_state_dict(model, {k.removeprefix("module."): v for k, v in state.items()})
    except KeyError as err:
        raise CheckpointError(f"{path}: {err.args[0]}. Check the backbone and image size against the checkpoint.") \
            from None


# ---------------------------------------------------------------------------
# Registration: the method and its per-profile setups
# ---------------------------------------------------------------------------

# Training split: official gen_train_json.py, normals from train/good and test/good, anomalies from the test defects.
RECIPE = Recipe(optimizer=make_optimizer, plan=training_plan, step=batch_losses, save=save_epoch_checkpoint,
                items=PromptedQueries, collate=collate_prompted, training_split=INCTRL_TRAIN)

SETUPS: dict[str, Setup] = {
    # The paper's setup: ViT-B-16-plus-240 (LAION-400M e32) at 240 px, layers 7/9/11,
    # 10 epochs of 100 balanced batches of 16.
    "full": Setup(Backbone("ViT-B-16-plus-240", "laion400m_e32"), InCTRLConfig()),
    "smoke": Setup(tiny_backbone("vit16-240"),
                   InCTRLConfig(image_size=tiny_image_size("vit16-240"), epochs=1, batch_size=8, steps_per_epoch=6),
                   eval_batch_size=4),
}
SETUPS["lab"] = SETUPS["full"]  # the lab profile: the full setup, within its budget (profiles.py)

register_method(Method(
    name="inctrl", learns="heads", setups=SETUPS, config_class=InCTRLConfig, seed=10,  # official cfg.RNG_SEED = 10
    build=clip_model_builder(InCTRL), with_prompts=InCTRLFewShot, load=load_checkpoint, recipe=RECIPE,
    resize="shorter_side_center_crop",  # official test transform: Resize(240) + CenterCrop(240)
    precision="fp32",  # the official engine trains and tests without autocast
))
