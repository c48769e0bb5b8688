"""WinCLIP and WinCLIP+ (Jeong et al., CVPR 2023) as anomalib runs them.

The authors released no code; anomalib's ``models/image/winclip`` (``torch_model.py``,
``prompting.py``, ``utils.py``) is the implementation users compare against, and the
golden fixtures (tests/fixtures/winclip/FIXTURES.md) come from it. Training-free:

* **Compositional prompt ensemble** - 7 normal and 4 anomalous states of the class name
  (verbatim, underscores kept) in 21 templates; the raw text embeddings are averaged per
  side (:func:`winclip_prompt_texts`, :func:`class_text_embeddings`, fixtures §3).
* **Windows** - every k x k window of the patch grid (stride 1) at each scale becomes its
  own short sequence ``[CLS, its k*k patch tokens]`` (original positional embeddings kept)
  run through the whole vision transformer; its embedding is ``ln_post(CLS) @ proj``
  (:func:`window_masks`, :func:`window_sequences`, :func:`window_embeddings`, fixtures §4.4).
* **Zero-shot (WinCLIP)** - softmax score of each window against [normal, anomalous] text
  at temperature 0.07, harmonic mean of the windows covering each patch per scale, then a
  harmonic mean over the scales and the image score (:func:`anomaly_probability`,
  :func:`harmonic_aggregation`, fixtures §5).
* **Few-shot (WinCLIP+)** - visual association: distance of each query patch token and
  window embedding to its nearest one among *all* positions of *all* references
  (:func:`visual_association`), aggregated per scale, averaged with the patch map, then
  averaged with the zero-shot map (fixtures §6).

open_clip >= 2.26.1 runs its transformers batch-first. anomalib permutes its window batch
for the old sequence-first transformer, which on these versions attends *across windows*
and collapses every window embedding to one vector (fixtures §8). Here windows are passed
``[windows, tokens, width]`` to the blocks directly, which are batch-first on every open_clip
version this package supports, and all windows of a batch go through the transformer in one
call per scale.

Shapes: ``B`` images, ``g`` grid side, ``P = g*g`` patches, ``W`` tower width, ``D`` joint
embedding dim, ``n`` windows of a scale, ``k`` references.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import (
    Backbone,
    embed_image,
    encode_text,
    freeze,
    grid_size,
    pooled_image_embedding,
    tiny_backbone,
    tiny_image_size,
    tokenize,
)
from .fewshot import PromptedPredictor
from .methods import Method, Setup, clip_model_builder, register_method
from .prompts import INCTRL_ABNORMAL_STATES, NORMAL_STATES, state_major_sentences

BACKBONE = "ViT-B-16-plus-240"  # anomalib torch_model.py BACKBONE / PRETRAINED
PRETRAINED = "laion400m_e31"

# anomalib prompting.py: 21 templates; "a jpeg corrupted photo of the {}." appears twice
# (fixtures §3, §9.7) and so counts twice in the mean.
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.",
    "a dark photo of a {}.", "a jpeg corrupted photo of the {}.", "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.", "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.",
    "a photo of a small {}.", "a photo of the small {}.", "a photo of a large {}.",
    "a photo of the large {}.", "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.", "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


@dataclass(frozen=True)
class WinCLIPConfig:
    """WinCLIP hyper-parameters; defaults are anomalib's (``WinClipModel`` / ``WinClip``).

    ``scales``: window sides in patches. ``temperature``: the fixed softmax temperature of
    every text score (0.07, i.e. logit scale ~14.3, fixtures §9.2). ``image_size``: the
    input side in pixels (anomalib's fixed 240). The number of references (WinCLIP+'s k)
    is whatever is passed to :meth:`WinCLIP.predict`.
    """

    scales: tuple[int, ...] = (2, 3)
    temperature: float = 0.07
    image_size: int = 240

    def __post_init__(self):
        if not self.scales or any(int(s) < 1 for s in self.scales):
            raise ValueError(f"scales must be window sides >= 1 patch, got {self.scales}")

    def replace(self, **changes) -> "WinCLIPConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------
# Text: the compositional prompt ensemble
# ---------------------------------------------------------------------------


def winclip_prompt_texts(class_name: str) -> tuple[list[str], list[str]]:
    """anomalib's (normal, anomalous) prompts: 7 x 21 = 147 and 4 x 21 = 84, state-major.

    The class name is used verbatim (``"metal_nut"`` keeps its underscore, fixtures §9.8).
    """
    return (state_major_sentences(class_name, NORMAL_STATES, WINCLIP_TEMPLATES),
            state_major_sentences(class_name, INCTRL_ABNORMAL_STATES, WINCLIP_TEMPLATES))


@torch.no_grad()
def class_text_embeddings(clip: nn.Module, class_name: str) -> torch.Tensor:
    """``[2, D]`` [normal, anomalous]: the mean of the *raw* ``encode_text`` outputs of each list.

    No per-prompt normalisation (unlike CLIP's usual ensembling, fixtures §3, §9.6);
    anomalib ``torch_model.py::_collect_text_embeddings``.
    """
    return torch.stack([encode_text(clip, tokenize(texts)).mean(dim=0)
                        for texts in winclip_prompt_texts(class_name)])  # [2, D]


def anomaly_probability(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[B, n]`` softmax over [normal, anomalous] of ``cos / temperature``, anomalous entry (paper Eq. 1).

    ``embeddings``: ``[B, n, D]`` (not normalised); ``text``: ``[B, 2, D]``
    (anomalib ``utils.py::class_scores``, fixtures §5).
    """
    cosine = F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).transpose(1, 2)  # [B, n, 2]
    return (cosine / temperature).softmax(dim=-1)[..., 1]  # [B, n]


# ---------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------


def window_masks(grid: int, scale: int) -> torch.Tensor:
    """``[scale*scale, n]`` flat patch indices of every ``scale`` x ``scale`` window, ``n = (grid-scale+1)**2``.

    Column ``w`` is the window with top-left patch ``(w // (grid-scale+1), w % (grid-scale+1))``,
    its patches row-major: ``unfold`` of the index grid (anomalib ``utils.py::make_masks``, fixtures §4.4).
    """
    if not 1 <= scale <= grid:
        raise ValueError(f"window scale {scale} does not fit a {grid}x{grid} patch grid")
    index = torch.arange(grid * grid, dtype=torch.float32).reshape(1, 1, grid, grid)
    return F.unfold(index, kernel_size=scale, stride=1)[0].long()  # [scale*scale, n]


def window_sequences(tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[B*n, 1+k*k, W]``: per image and window, CLS then the window's patch tokens (image-major).

    ``tokens``: ``[B, 1+P, W]`` embedded tokens (positional embedding added); ``masks``:
    ``[k*k, n]`` from :func:`window_masks`. Tokens keep their grid position's embedding.
    """
    cls = torch.zeros(1, masks.shape[1], dtype=masks.dtype, device=masks.device)  # [1, n]
    index = torch.cat([cls, masks.to(tokens.device) + 1]).T  # [n, 1+k*k]
    return tokens[:, index].flatten(0, 1)  # [B*n, 1+k*k, W]


def transformer_stream(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The vision blocks on batch-first sequences ``[N, L, W] -> [N, L, W]``, each sequence independent.

    The blocks are called directly (as :func:`~zsadlab.backbone.block_tokens` does), so no
    layout permutation can turn the window axis into the attention axis (fixtures §8).
    """
    for block in visual.transformer.resblocks:
        x = block(x)
    return x


def window_embeddings(visual: nn.Module, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[B, n, D]`` = ``ln_post(CLS) @ proj`` of every window run alone through all blocks (fixtures §4.4).

    ``tokens``: ``[B, 1+P, W]`` after ``ln_pre`` (selecting after the per-token LayerNorm is the
    same as before it, fixtures §9.4). All ``B*n`` windows go through the transformer in one call.
    """
    sequences = window_sequences(tokens, masks)  # [B*n, 1+k*k, W]
    pooled = pooled_image_embedding(visual, transformer_stream(visual, sequences))  # [B*n, D]
    return pooled.unflatten(0, (tokens.shape[0], masks.shape[1]))  # [B, n, D]


def harmonic_aggregation(window_scores: torch.Tensor, masks: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B, g, g]``: per patch, the harmonic mean of the scores of the windows that contain it.

    ``window_scores``: ``[B, n]``. ``H[p] = n(p) / sum_{w ∋ p} 1/s[w]``; NaN and +inf become 0
    (anomalib ``utils.py::harmonic_aggregation``, fixtures §5, §9.13).
    """
    incidence = F.one_hot(masks.to(window_scores.device), grid * grid).sum(dim=0).to(window_scores.dtype)  # [n, P]
    reciprocal = (1.0 / window_scores) @ incidence  # [B, P]
    harmonic = torch.nan_to_num(incidence.sum(dim=0) / reciprocal, nan=0.0, posinf=0.0)  # [B, P]
    return harmonic.unflatten(1, (grid, grid))  # [B, g, g]


def visual_association(query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``[B, n]``: ``min_r (1 - cos(query, r)) / 2`` over every row ``r`` of every reference (paper Eq. 4).

    ``query``: ``[B, n, C]``; ``memory``: ``[k, m, C]``, pooled over shots and positions, no
    positional matching (anomalib ``utils.py::visual_association_score``, fixtures §6, §9.9).
    """
    rows = F.normalize(memory.flatten(0, 1), dim=-1)  # [k*m, C]
    cosine = F.normalize(query, dim=-1) @ rows.T  # [B, n, k*m]
    return (1.0 - cosine.amax(dim=-1)) / 2  # [B, n]


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


@dataclass
class WinCLIPFeatures:
    """What one encoder pass gives per image; for references it is WinCLIP+'s visual memory."""

    image_embedding: torch.Tensor  # [B, D] encode_image
    patch_tokens: torch.Tensor  # [B, P, W] ln_post tokens, no proj (fixtures §4.3, §9.5)
    windows: tuple[torch.Tensor, ...]  # per scale [B, n, D]


@dataclass
class FewShotMaps:
    """WinCLIP+'s visual-association maps (fixtures §6)."""

    patch_map: torch.Tensor  # [B, g, g] A_p
    window_scores: tuple[torch.Tensor, ...]  # per scale [B, n] a_k
    scale_maps: tuple[torch.Tensor, ...]  # per scale [B, g, g] V_k
    map: torch.Tensor  # [B, g, g] F = mean(A_p, V_k...)


@dataclass
class WinCLIPOutput:
    """Scores and maps of one pass, per image; ``few_shot`` is ``None`` without references."""

    image_score: torch.Tensor  # [B] s_img, the image's text score
    window_scores: tuple[torch.Tensor, ...]  # per scale [B, n] s_k
    scale_maps: tuple[torch.Tensor, ...]  # per scale [B, g, g] H_k
    zero_shot_map: torch.Tensor  # [B, g, g] Z
    few_shot: FewShotMaps | None
    score: torch.Tensor  # [B] s_img, or (s_img + max F) / 2
    patch_map: torch.Tensor  # [B, g, g] Z, or (Z + F) / 2


class WinCLIP(nn.Module):
    """WinCLIP (zero-shot) and WinCLIP+ (with references) on a frozen open_clip ViT; nothing trains.

    ``predict(images, class_names)`` -> ``(scores [B], maps [B, S, S])``; with
    ``references=[k, 3, S, S]`` normal images of the class (or their :meth:`features`,
    computed once per class) it is WinCLIP+. Every image is scored independently of its
    batch mates.
    """

    def __init__(self, clip: nn.Module, config: WinCLIPConfig = WinCLIPConfig()):
        super().__init__()
        self.config = config
        self.clip = freeze(clip).eval()
        self.grid = grid_size(clip.visual, config.image_size)
        for scale in config.scales:  # persistent=False: derived, never in a checkpoint
            self.register_buffer(f"masks_s{scale}", window_masks(self.grid, scale), persistent=False)
        self._text_cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> "WinCLIP":
        super().train(mode)
        self.clip.eval()  # frozen backbone, always in eval mode
        return self

    @property
    def masks(self) -> tuple[torch.Tensor, ...]:
        """Per scale ``[k*k, n]`` window masks."""
        return tuple(getattr(self, f"masks_s{scale}") for scale in self.config.scales)

    # -- encoders ---------------------------------------------------------------

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """One-line ``ValueError`` unless ``images`` is a non-empty ``[N, 3, S, S]`` batch."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size) or images.shape[0] == 0:
            raise ValueError(f"WinCLIP {what} must be a non-empty [N, 3, {size}, {size}] tensor of normalised images, "
                             f"got shape {tuple(images.shape)}; resize to {size} px (zsadlab.data transforms)")

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> WinCLIPFeatures:
        """Image embedding, final patch tokens and window embeddings of ``[N, 3, S, S]`` images.

        One pass through the vision tower for the whole images; the windows reuse its
        embedded tokens (the map anomalib hooks at ``patch_dropout``, fixtures §4.1).
        """
        visual = self.clip.visual
        tokens = embed_image(visual, images)  # [N, 1+P, W] after ln_pre
        final = transformer_stream(visual, tokens)  # [N, 1+P, W]
        return WinCLIPFeatures(
            image_embedding=pooled_image_embedding(visual, final),  # [N, D]
            patch_tokens=visual.ln_post(final[:, 1:]),  # [N, P, W]
            windows=tuple(window_embeddings(visual, tokens, m) for m in self.masks),  # per scale [N, n, D]
        )

    def text_embeddings(self, class_name: str) -> torch.Tensor:
        """``[2, D]`` raw [normal, anomalous] text embeddings of ``class_name``, cached per model."""
        device = self.clip.visual.proj.device
        if class_name not in self._text_cache:
            # kept fp32 even when first computed under autocast (a later fp32 call can use it)
            self._text_cache[class_name] = class_text_embeddings(self.clip, class_name).float()
        self._text_cache[class_name] = self._text_cache[class_name].to(device)
        return self._text_cache[class_name]

    # -- scoring ------------------------------------------------------------------

    def scale_maps(self, window_scores: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Per scale ``[B, g, g]``: the harmonic aggregation of that scale's ``[B, n]`` window scores."""
        return tuple(harmonic_aggregation(s, m, self.grid) for s, m in zip(window_scores, self.masks, strict=True))

    def few_shot_maps(self, query: WinCLIPFeatures, memory: WinCLIPFeatures) -> FewShotMaps:
        """Visual association of the query against the references' memory (fixtures §6)."""
        patch_map = visual_association(query.patch_tokens, memory.patch_tokens).unflatten(1, (self.grid, self.grid))
        window_scores = tuple(visual_association(q, m) for q, m in zip(query.windows, memory.windows))
        scale_maps = self.scale_maps(window_scores)
        fused = torch.stack([patch_map, *scale_maps]).mean(dim=0)  # [B, g, g] arithmetic (§9.1)
        return FewShotMaps(patch_map, window_scores, scale_maps, fused)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, class_names: str | Sequence[str],
                references: torch.Tensor | WinCLIPFeatures | None = None) -> WinCLIPOutput:
        """Every score and map of anomalib's ``forward`` (fixtures §5-§6), on the ``g`` x ``g`` patch grid.

        ``class_names``: one name, or one per image. ``references``: ``[k, 3, S, S]`` normal
        images of the class, or their :meth:`features`; ``None`` for zero-shot.
        """
        self.check_images(images)
        batch = images.shape[0]
        names = [class_names] * batch if isinstance(class_names, str) else list(class_names)
        if len(names) != batch:
            raise ValueError(f"WinCLIP got {len(names)} class names for {batch} images; pass one name or one per image")
        if isinstance(references, torch.Tensor):
            self.check_images(references, what="references (normal images of the class)")
            references = self.features(references)

        query = self.features(images)
        text = torch.stack([self.text_embeddings(name) for name in names])  # [B, 2, D]
        tau = self.config.temperature
        image_score = anomaly_probability(query.image_embedding.unsqueeze(1), text, tau)[:, 0]  # [B]
        window_scores = tuple(anomaly_probability(w, text, tau) for w in query.windows)  # per scale [B, n]
        scale_maps = self.scale_maps(window_scores)
        image_map = image_score[:, None, None].expand(-1, self.grid, self.grid)  # [B, g, g]
        levels = torch.stack([image_map, *scale_maps])  # [1+scales, B, g, g]
        zero_shot_map = levels.shape[0] / (1.0 / levels).sum(dim=0)  # [B, g, g] harmonic, no guard (§9.13)

        if references is None:
            return WinCLIPOutput(image_score, window_scores, scale_maps, zero_shot_map, None,
                                 score=image_score, patch_map=zero_shot_map)
        few_shot = self.few_shot_maps(query, references)
        return WinCLIPOutput(image_score, window_scores, scale_maps, zero_shot_map, few_shot,
                             score=(image_score + few_shot.map.amax(dim=(1, 2))) / 2,
                             patch_map=(zero_shot_map + few_shot.map) / 2)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names: str | Sequence[str],
                references: torch.Tensor | WinCLIPFeatures | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [B], maps [B, S, S])``: the map bilinearly upsampled, no smoothing (fixtures §5, §9.11)."""
        out = self(images, class_names, references)
        size = images.shape[-2:]
        maps = F.interpolate(out.patch_map.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        return out.score, maps.squeeze(1)


class WinCLIPPlus(PromptedPredictor):
    """WinCLIP+: WinCLIP with one set of normal reference images per class, whose features
    (patch tokens and window embeddings) are computed once and kept as the visual memory."""

    def encode(self, images: torch.Tensor) -> WinCLIPFeatures:
        return self.model.features(images.to(self.clip.visual.proj.device))

    def predict_class(self, x: torch.Tensor, class_name: str,
                      memory: WinCLIPFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(x, class_name, references=memory)


# --- registration: WinCLIP (zero-shot) and WinCLIP+ (k normal references); training-free -------------

SETUPS: dict[str, Setup] = {
    "full": Setup(Backbone(BACKBONE, PRETRAINED), WinCLIPConfig()),
    "smoke": Setup(tiny_backbone("vit16-240"), WinCLIPConfig(image_size=tiny_image_size("vit16-240")),
                   eval_batch_size=4),
}
SETUPS["lab"] = SETUPS["full"]  # the lab profile: the full setup, within its budget (profiles.py)

register_method(Method(name="winclip", learns="nothing", setups=SETUPS, config_class=WinCLIPConfig,
                       build=clip_model_builder(WinCLIP)))
register_method(Method(name="winclip_plus", learns="nothing", setups=SETUPS, config_class=WinCLIPConfig,
                       build=clip_model_builder(WinCLIP), with_prompts=WinCLIPPlus))
