"""MuSc (Li et al., ICLR 2024): zero-shot anomaly scores from the mutual scoring of unlabeled images.

No training and no prompts. Normal patches look alike across the images of one class, an
anomalous patch is rare: so each patch is scored by how far it is from its nearest patch in
every *other* image of the (unlabeled) test set. The pieces, as the official code runs them
(xrli-U/MuSc @b76b93d, ``models/musc.py:127-248``; fixtures/musc):

* **features** - the raw residual stream after blocks ``layer + 1`` of each ``feature_layers``
  entry (0-based in ``configs/musc.yaml``, ``musc.py:59`` adds 1), no ``ln_post``/``proj``; the
  global embedding ``ln_post(CLS) @ proj``, L2-normalised, for RsCIN (:meth:`MuSc.extract`).
* **LNAMD** (:func:`lnamd`) - per image and layer one LayerNorm over the whole ``(C, G, G)`` map,
  zero padding, the per-channel ``r x r`` neighbourhood mean, L2 normalisation per patch.
* **MSM** (:func:`mutual_scoring`) - per patch the distance to the nearest patch of every other
  image; the mean of the ``int(0.3 (N-1))`` smallest of those ``N-1`` distances.
* **maps** - MSM averaged over layers, then over ``r`` (float64), upsampled bilinearly with
  ``align_corners=True``; the image score before RsCIN is the maximum of the upsampled map.
* **RsCIN** (:func:`rscin`) - the min-max normalised scores re-scored by the similarity-weighted
  mean over each image's ``k`` most similar images (itself included), averaged over ``k_list``.

MuSc is *transductive*: an image's score depends on the other images it is scored with. Subsets
(official ``divide_num``) are passed by the caller; the default is the whole set as one subset.
The official code forms its subsets stratified by the ground-truth defect folder; zsadlab never
does (PROTOCOL.md).

Memory: the mutual scoring compares image chunks with image chunks (:func:`mutual_scoring`'s
``chunk_size``), so no ``N x N x P x P`` tensor exists; LNAMD features are derived from the stored
tokens chunk by chunk, and the tokens may be a memory-mapped array (:meth:`MuSc.score_tokens`).

Shapes: ``N`` images, ``L`` feature layers, ``P = G*G`` patches, ``C`` tower width, ``D`` joint dim.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import Backbone, block_tokens, factory_rebuilt, freeze, pooled_image_embedding, tiny_backbone, tiny_image_size
from .errors import InputError
from .methods import Method, Setup, clip_model_builder, register_method

CHUNK_SIZE = 4  # images per side of one distance block: [4*P, 4*P] floats (120 MB at ViT-L, 518 px)


@dataclass(frozen=True)
class MuScConfig:
    """MuSc's hyper-parameters; the defaults are ``configs/musc.yaml`` (ViT-L-14-336 at 518 px).

    ``feature_layers``: 0-based block indices as in the official config (block ``l + 1`` is used).
    ``r_list``: LNAMD aggregation degrees (odd). ``topmin_min``/``topmin_max``: MSM's interval of
    the sorted patch-to-image distances (a fraction of ``N - 1``, or a count when >= 1).
    ``k_list``: RsCIN's neighbourhood sizes (``(1, 8, 9)`` is the official VisA setting).
    ``batch_size``: images per encoder batch. ``official_build``: at a non-native ``image_size``
    run the backbone as the official code rebuilds it (:func:`zsadlab.backbone.factory_rebuilt`
    with ``antialias=False``). ``chunk_size``: images per side of one distance block.
    """

    feature_layers: tuple[int, ...] = (5, 11, 17, 23)
    r_list: tuple[int, ...] = (1, 3, 5)
    image_size: int = 518
    topmin_min: float = 0.0
    topmin_max: float = 0.3
    k_list: tuple[int, ...] = (1, 2, 3)
    batch_size: int = 4
    official_build: bool = True
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self):
        even = [r for r in self.r_list if r < 1 or r % 2 == 0]
        if even:
            raise ValueError(f"MuSc's r_list holds odd neighbourhood sizes >= 1; got {even}")

    @property
    def blocks(self) -> tuple[int, ...]:
        """1-based blocks of :func:`zsadlab.backbone.block_tokens` (official ``musc.py:59``: ``l + 1``)."""
        return tuple(layer + 1 for layer in self.feature_layers)

    def replace(self, **changes) -> "MuScConfig":
        return dataclasses.replace(self, **changes)


# --- LNAMD ----------------------------------------------------------------------------------


def neighbourhood_means(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """``[N, 1+P, C]`` raw tokens of one layer -> ``[N, P, C]``: LNAMD before its L2 normalisation.

    ``_LNAMD.py:72-128`` (fixtures/musc §5 steps 1-3): the CLS row dropped; one LayerNorm without
    affine over all ``C*P`` numbers of an image (not per token); zero padding *after* it and the
    per-channel ``r x r`` mean (``Unfold`` + ``adaptive_avg_pool1d`` is exactly
    ``avg_pool2d(count_include_pad=True)``).
    """
    n, p, c = tokens.shape[0], tokens.shape[1] - 1, tokens.shape[2]
    g = int(round(p ** 0.5))
    x = F.layer_norm(tokens[:, 1:].reshape(n, p * c), (p * c,), eps=1e-5)  # [N, P*C]
    if r > 1:
        x = x.view(n, g, g, c).permute(0, 3, 1, 2)  # [N, C, G, G]
        x = F.avg_pool2d(x, r, stride=1, padding=(r - 1) // 2, count_include_pad=True)
        x = x.permute(0, 2, 3, 1)  # [N, G, G, C]
    return x.reshape(n, p, c)


def lnamd_layer(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """``[N, 1+P, C]`` raw tokens of one layer -> ``[N, P, C]`` LNAMD features, each patch divided by its
    norm (``musc.py:195``)."""
    x = neighbourhood_means(torch.as_tensor(tokens), r)  # [N, P, C]
    return x / x.norm(dim=-1, keepdim=True)


def lnamd(tokens: torch.Tensor | Sequence[torch.Tensor], r: int) -> torch.Tensor:
    """Raw tokens ``[L, N, 1+P, C]`` (or ``L`` tensors ``[N, 1+P, C]``) -> ``[N, P, L, C]`` LNAMD features."""
    return torch.stack([lnamd_layer(layer, r) for layer in tokens], dim=2)


# --- MSM --------------------------------------------------------------------------------------


def interval_bounds(others: int, topmin_min: float, topmin_max: float) -> tuple[int, int]:
    """``(k_min, k_max)`` of the interval average over ``others = N - 1`` images (``_MSM.py:19-26``).

    A bound < 1 is a fraction of ``others`` rounded down (``int``), one >= 1 a count. ``k_max ==
    k_min`` (e.g. ``N <= 4`` at the default 0.3) leaves nothing to average: the official scores are NaN.
    """
    k_max = topmin_max if topmin_max >= 1 else int(others * topmin_max)
    k_min = topmin_min if topmin_min >= 1 else int(others * topmin_min)
    return tuple(sorted((int(k_min), int(k_max))))


def scorable(n: int, topmin_min: float, topmin_max: float) -> bool:
    """Do ``n`` images leave a non-empty MSM interval within the ``n - 1`` others?"""
    k_min, k_max = interval_bounds(n - 1, topmin_min, topmin_max)
    return k_min < k_max <= n - 1


def min_set_size(config: "MuScConfig") -> int:
    """The fewest images per subset whose MSM interval is not empty (5 at the default 0.3)."""
    return next(n for n in range(2, 100_000) if scorable(n, config.topmin_min, config.topmin_max))


def nearest_patch_distances(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``[a, P, C]``, ``[b, P', C]`` -> ``[a, P, b]``: each query patch's distance to its nearest patch of each key image.

    One matrix product for the block, as ``torch.cdist``'s matrix-product path computes distances
    (``|x|^2 + |y|^2 - 2 x.y``, fixtures/musc §10.6), but the minimum is taken over the squared
    form before the square root, so no second ``[a*P, b*P']`` pass is needed. Always fp32, also
    under autocast, as ``cdist`` (an autocast fp32 op) is in the official fp16 runs.
    """
    a, p, c = queries.shape
    b, q = keys.shape[:2]
    x, y = queries.reshape(a * p, c).float(), keys.reshape(b * q, c).float()
    with torch.autocast(x.device.type, enabled=False):
        partial = torch.addmm((y * y).sum(-1)[None], x, y.T, alpha=-2.0)  # [a*P, b*P'] = |y|^2 - 2 x.y
    nearest = partial.view(a * p, b, q).amin(dim=-1) + (x * x).sum(-1, keepdim=True)  # [a*P, b]
    return nearest.clamp_min_(0).sqrt_().view(a, p, b)


def chunk_mutual_scores(
    features: Callable[[slice], torch.Tensor], n: int, topmin_min: float, topmin_max: float,
    chunk_size: int = CHUNK_SIZE,
) -> torch.Tensor:
    """MSM scores ``[n, P]`` (float64) of ``n`` images whose features ``features(slice) -> [b, P, C]`` gives.

    ``_MSM.py:10-30, 53-59`` (fixtures/musc §6): for image ``i``, the distances ``[P, n-1]`` to every
    other image (:func:`nearest_patch_distances`), sorted, averaged over ``[k_min, k_max)``
    (:func:`interval_bounds`), cast to float64. Images are taken ``chunk_size`` at a time on both
    sides: the largest intermediate is one ``[chunk*P, chunk*P]`` block, whatever ``n`` is, and
    ``features`` is asked for one chunk at a time (it may compute them, or read a memory map).
    """
    k_min, k_max = interval_bounds(n - 1, topmin_min, topmin_max)
    if k_max > n - 1:
        raise ValueError(f"the MSM interval [{k_min}, {k_max}) needs more than the {n - 1} other images")
    chunks = [slice(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]
    scores = []
    for rows in chunks:
        queries = features(rows)  # [a, P, C]
        distances = torch.cat([nearest_patch_distances(queries, queries if cols == rows else features(cols))
                               for cols in chunks], dim=-1)  # [a, P, n]
        own = torch.arange(rows.start, rows.stop)
        distances[torch.arange(len(own)), :, own] = float("inf")  # an image is not its own neighbour
        nearest = distances.sort(dim=-1).values[..., k_min:k_max]  # [a, P, k_max - k_min]
        scores.append(nearest.mean(dim=-1).double())
    return torch.cat(scores)  # [n, P]


def read_rows(array, index) -> torch.Tensor:
    """``array[index]`` as a tensor: a tensor is indexed, an array (e.g. a ``np.memmap``) is read from disk."""
    rows = array[index]
    return rows if torch.is_tensor(rows) else torch.from_numpy(np.ascontiguousarray(rows))


def mutual_scoring(Z_layer, topmin_min: float = 0.0, topmin_max: float = 0.3,
                   chunk_size: int = CHUNK_SIZE) -> torch.Tensor:
    """``[N, P, C]`` LNAMD features of one layer -> ``[N, P]`` float64 MSM scores (fixtures/musc §6).

    ``Z_layer`` may be a tensor or an array (a ``np.memmap`` is read one chunk at a time).
    With fewer than 5 images at the default interval every score is NaN, as officially.
    """
    return chunk_mutual_scores(lambda rows: read_rows(Z_layer, rows), len(Z_layer), topmin_min, topmin_max, chunk_size)


# --- maps and RsCIN ---------------------------------------------------------------------------


def upsampled_maps(patch_map: torch.Tensor, image_size: int) -> torch.Tensor:
    """``[N, P]`` float64 -> ``[N, S, S]`` float64: bilinear, ``align_corners=True``, no smoothing (``musc.py:222-227``)."""
    g = int(round(patch_map.shape[1] ** 0.5))
    grid = patch_map.view(-1, 1, g, g)
    return F.interpolate(grid, size=image_size, mode="bilinear", align_corners=True)[:, 0]


def rscin(scores, cls, k_list: Sequence[int] = (1, 2, 3)) -> np.ndarray:
    """``[N]`` image scores, ``[N, D]`` global embeddings -> ``[N]`` float32 re-scored (``_RsCIN.py:5-32``, fixtures/musc §8).

    Scores min-max normalised over the set; ``W = cls @ cls.T`` (float32); for each ``k`` every row
    keeps its ``k`` largest entries (the image itself included), and the score becomes the
    ``W``-weighted mean of the kept images' scores; the mean over ``k_list``. A ``0`` in
    ``k_list`` returns the scores unchanged, as officially.
    """
    scores = np.asarray(scores.detach().cpu() if torch.is_tensor(scores) else scores, dtype=np.float64)
    if 0 in k_list:
        return scores
    cls = np.asarray(cls.detach().cpu() if torch.is_tensor(cls) else cls, dtype=np.float32)
    normalised = torch.from_numpy((scores - scores.min()) / (scores.max() - scores.min())).float()  # [N]
    similarity = torch.from_numpy(cls @ cls.T).float()  # [N, N]
    rescored = []
    for k in k_list:
        kept = similarity.topk(min(k, len(scores)), dim=1).indices  # [N, k]
        weights = torch.zeros_like(similarity).scatter_(1, kept, similarity.gather(1, kept))  # [N, N]
        rescored.append(weights @ normalised / weights.sum(dim=1))  # [N]
    return torch.stack(rescored, dim=-1).mean(dim=-1).numpy()


# --- the model --------------------------------------------------------------------------------


class MuSc(nn.Module):
    """MuSc on a frozen open_clip CLIP; learns nothing. ``score_set`` scores one class's test set at once.

    ``clip`` is the backbone as loaded; with ``config.official_build`` and a non-native
    ``image_size`` the module runs :func:`zsadlab.backbone.factory_rebuilt` of it (GELU,
    non-antialiased bicubic positions), sharing its weights.
    """

    def __init__(self, clip, config: MuScConfig = MuScConfig()):
        super().__init__()
        self.config = config
        if config.official_build:
            clip = factory_rebuilt(clip, config.image_size, antialias=False)
        self.clip = freeze(clip).eval()

    @property
    def min_images(self) -> int:
        """The fewest images per subset this model can score (:func:`min_set_size`)."""
        return min_set_size(self.config)

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, 3, S, S]`` -> ``(cls [N, D] L2-normalised, tokens [L, N, 1+P, C] raw block outputs)``.

        ``musc.py:154-179`` (fixtures/musc §4), in encoder batches of ``config.batch_size``.
        """
        visual = self.clip.visual
        device = visual.proj.device
        cls, tokens = [], []
        for batch in torch.as_tensor(images).split(self.config.batch_size):
            layers, final = block_tokens(visual, batch.to(device), self.config.blocks)
            embedding = pooled_image_embedding(visual, final)  # [B, D]
            cls.append(embedding / embedding.norm(dim=-1, keepdim=True))
            tokens.append(torch.stack(layers))  # [L, B, 1+P, C]
        return torch.cat(cls), torch.cat(tokens, dim=1)

    @torch.no_grad()
    def patch_map(self, tokens, subset: Sequence[int]) -> torch.Tensor:
        """``[n, P]`` float64: MSM of the images ``subset`` of ``tokens [L, N, 1+P, C]``, averaged over
        layers then over ``r`` (``musc.py:207-218``). LNAMD runs on one chunk of images at a time."""
        subset = np.asarray(subset)
        device = self.clip.visual.proj.device
        per_r = []
        for r in self.config.r_list:
            per_layer = []
            for layer in range(len(tokens)):
                def features(rows: slice, layer=layer, r=r):  # [b, P, C] from the stored [b, 1+P, C]
                    return lnamd_layer(read_rows(tokens[layer], subset[rows]).to(device), r)
                per_layer.append(chunk_mutual_scores(features, len(subset), self.config.topmin_min,
                                                     self.config.topmin_max, self.config.chunk_size).cpu())
            per_r.append(torch.stack(per_layer).mean(dim=0))  # [n, P]
        return torch.stack(per_r).mean(dim=0)  # [n, P]

    def checked_subsets(self, n: int, subsets: Sequence[Sequence[int]] | None) -> list[np.ndarray]:
        """The subsets as index arrays (default: one, all ``n`` images); each large enough to score."""
        subsets = [np.arange(n)] if subsets is None else [np.asarray(s, dtype=np.int64) for s in subsets]
        covered = np.sort(np.concatenate(subsets))
        if not np.array_equal(covered, np.arange(n)):
            raise InputError(f"MuSc subsets must cover each of the {n} images exactly once")
        small = [len(s) for s in subsets if len(s) < self.min_images]
        if small:
            raise InputError(f"MuSc scores an image against the other images of its set and needs at least "
                             f"{self.min_images} images per set; got {small}. Give it more images of the class.")
        return subsets

    @torch.no_grad()
    def score_tokens(self, cls, tokens, subsets: Sequence[Sequence[int]] | None = None
                     ) -> tuple[np.ndarray, torch.Tensor]:
        """``(scores [N] float32 after RsCIN, maps [N, S, S] float32)`` from :meth:`extract`'s outputs.

        ``tokens`` may be a memory-mapped ``[L, N, 1+P, C]`` array: only chunks of it are read.
        MSM runs per subset, the maxima and RsCIN on all images (``musc.py:139-248``, fixtures/musc §9);
        outputs are in input order.
        """
        n = len(cls)
        maps = torch.empty(n, self.config.image_size, self.config.image_size)  # [N, S, S]
        maxima = np.empty(n)  # [N] float64, before RsCIN
        for subset in self.checked_subsets(n, subsets):
            upsampled = upsampled_maps(self.patch_map(tokens, subset), self.config.image_size)  # [n, S, S] f64
            maxima[subset] = upsampled.flatten(1).amax(dim=1).numpy()
            maps[torch.as_tensor(subset)] = upsampled.float()
        return rscin(maxima, cls, self.config.k_list), maps

    def predict(self, images: torch.Tensor, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One class's whole unlabeled set ``[N, 3, S, S]`` -> ``(scores [N], maps [N, S, S])``, one subset.

        MuSc is transductive: each score depends on the other images of ``images``.
        """
        scores, maps = self.score_set(images)
        return torch.from_numpy(scores), maps

    def score_set(self, images: torch.Tensor, subsets: Sequence[Sequence[int]] | None = None
                  ) -> tuple[np.ndarray, torch.Tensor]:
        """One class's whole test set ``[N, 3, S, S]`` -> ``(scores [N], maps [N, S, S])``.

        ``subsets`` (official ``divide_num``): lists of indices scored among themselves; RsCIN runs
        on all images. Default: one subset of all images.
        """
        self.checked_subsets(len(images), subsets)
        cls, tokens = self.extract(images)
        return self.score_tokens(cls.cpu().numpy(), tokens, subsets)


def config_for_test_set(config: MuScConfig, dataset_name: str | None) -> MuScConfig:
    """The official RsCIN neighbourhoods for a test set: ``k_list`` (1, 8, 9) on VisA, (1, 2, 3) on any
    other (``musc.py:242-247`` chooses them by the dataset's name, whatever the caller set)."""
    return dataclasses.replace(config, k_list=(1, 8, 9) if dataset_name == "visa" else (1, 2, 3))


SETUPS: dict[str, Setup] = {
    "full": Setup(Backbone("ViT-L-14-336", "openai"), MuScConfig()),
    "smoke": Setup(tiny_backbone("vit14-112"),
                   MuScConfig(feature_layers=(1, 3, 5, 7), image_size=tiny_image_size("vit14-112"))),
}
SETUPS["lab"] = SETUPS["full"]  # the lab profile: the full setup, within its budget (profiles.py)

# Transductive: each class's whole test set is scored at once (``musc.py:139-248``); fp16 autocast on CUDA
# as the official ``musc.py:161, 193`` (distances stay fp32, see :func:`nearest_patch_distances`).
register_method(Method(name="musc", learns="nothing", setups=SETUPS, config_class=MuScConfig, seed=42,
                       build=clip_model_builder(MuSc), precision="fp16", transductive=True,
                       min_images=min_set_size(MuScConfig()), for_test_set=config_for_test_set))

