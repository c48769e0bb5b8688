"""AnomalyCLIP (Zhou et al., ICLR 2024): object-agnostic prompts + DPAM + global/local losses.

This module only composes the pieces, each in its own module:

* :mod:`zsadlab.dpam` - the dual-path image encoder (local V-V attention);
* :mod:`zsadlab.prompts` - learnable object-agnostic prompts with deep text tokens;
* :mod:`zsadlab.maps` - similarity, per-layer maps, sum, Gaussian, image scores;
* :mod:`zsadlab.losses` - focal + dice (local) and cross-entropy (global).

The baselines of the paper's tables are presets of the same model (:data:`PRESETS`):
CLIP (the paper's two plain prompts "A photo of a normal/an anomalous [cls].", CLIP's standard
image embedding, final block), CLIP-AC (the same image side with the object-aware prompt
ensemble instead of the two prompts: only the text differs from CLIP), CoOp (learnable
class-name prompts trained with the image-level cross-entropy only - CoOp proper: no DPAM, no
deep tokens, no local loss), and ``anomalyclip_multilayer``: four distinct blocks (6/12/18/24 on ViT-L).

**Feature layers.** The default is block 24 alone with ``lam = 4``, the published
configuration: until April 2025 the official DPAM path appended references to one tensor
that later blocks updated in place, so its four "multi-scale" maps were four copies of
block 24; the paper's numbers and the released checkpoints come from that, and the authors
fixed it (``.clone()``, official commit 2a7c886), switched ``train.sh``/``test.sh`` to
``--features_list 24`` (6a6ce8b / cc0cfba) and added ``lam = 4`` to ``train.py`` (76b83e1).
Four really distinct layers are the ``anomalyclip_multilayer`` preset, never the default.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from . import losses as L
from .backbone import Backbone, freeze, project_tokens, tiny_backbone, tiny_image_size
from .dpam import check_mode, dpam_tokens
from .maps import (
    TEMPERATURE,
    anomaly_map,
    gaussian_smooth,
    image_scores,
    layer_anomaly_map,
    patch_probabilities,
    similarity_logits,
    similarity_maps,
)
from .checkpoints import load_submodule_checkpoint, read_checkpoint
from .errors import CheckpointError
from .methods import Method, Setup, clip_model_builder, learned_state, masked_test_split_recipe, register_method
from .prompts import PromptLearner, ensemble_text_features, plain_text_features
from .utils import save_torch_atomic

# Where the [normal, anomalous] text comes from: learned prompts, the hand-written ensemble, two plain prompts.
TEXT_SOURCES = ("learned", "ensemble", "plain")
HANDWRITTEN_TEXT = {"ensemble": ensemble_text_features, "plain": plain_text_features}


@dataclass(frozen=True)
class AnomalyCLIPConfig:
    """AnomalyCLIP hyper-parameters; defaults are the paper's ViT-L-14-336 setup (official train.sh / test.sh; PROTOCOL.md).

    ``features``: 1-based blocks whose tokens make the maps. ``dpam_blocks``: how many final
    blocks DPAM refines (official ``DPAM_layer - 1``). ``depth``/``t_n_ctx``: deep text tokens
    (``depth=1`` disables them). ``object_agnostic=False`` puts the class name in the learnable
    prompts (ablation T2). ``loss``: ``"both"``, ``"global"`` or ``"local"``.
    ``text_source="ensemble"`` uses the hand-written prompt ensemble instead of learned prompts,
    ``"plain"`` the two plain prompts of the paper's CLIP baseline;
    ``global_ln_post=True`` uses CLIP's standard image embedding (with ``ln_post``).
    ``epochs``/``batch_size``: the training recipe of the official ``train.sh`` (15 epochs of 8).
    """

    features: tuple[int, ...] = (24,)
    dpam_blocks: int = 19
    dpam_mode: str | None = "vv"
    n_ctx: int = 12
    depth: int = 9
    t_n_ctx: int = 4
    image_size: int = 518
    temperature: float = TEMPERATURE
    sigma: float = 4.0
    lam: float = 4.0
    object_agnostic: bool = True
    loss: str = "both"
    text_source: str = "learned"
    global_ln_post: bool = False
    deep_prompt_fp16: bool = False
    epochs: int = 15
    batch_size: int = 8

    def __post_init__(self):
        check_mode(self.dpam_mode)
        L.check_setting(self.loss)
        if self.text_source not in TEXT_SOURCES:
            raise ValueError(f"text_source must be one of {TEXT_SOURCES}, got {self.text_source!r}")

    def replace(self, **changes) -> "AnomalyCLIPConfig":
        return dataclasses.replace(self, **changes)


def quarter_blocks(config: AnomalyCLIPConfig) -> AnomalyCLIPConfig:
    """Four distinct feature blocks at 1/4, 2/4, 3/4 and all of the final one (6/12/18/24 on ViT-L)."""
    final = config.features[-1]
    return config.replace(features=tuple(final * i // 4 for i in (1, 2, 3, 4)))


def final_block(config: AnomalyCLIPConfig) -> AnomalyCLIPConfig:
    """Only the last feature block (plain CLIP reads its final layer)."""
    return config.replace(features=config.features[-1:])


# Named presets: the method and its baselines, as (changes, then a function of the base config).
PRESETS: dict[str, tuple[dict, Callable[[AnomalyCLIPConfig], AnomalyCLIPConfig] | None]] = {
    "anomalyclip": ({}, None),
    "anomalyclip_multilayer": ({}, quarter_blocks),
    # CoOp proper (Zhou et al., IJCV 2022) as the AnomalyCLIP paper compares with it: learnable prompts
    # with the class name, trained with the image-level cross-entropy only (hence its ~33 pixel AUROC).
    "coop": (dict(dpam_mode=None, depth=1, object_agnostic=False, loss="global"), None),
    "clip_ac": (dict(dpam_mode=None, text_source="ensemble", global_ln_post=True), final_block),
    "clip": (dict(dpam_mode=None, text_source="plain", global_ln_post=True), final_block),
}


def preset_config(name: str, base: AnomalyCLIPConfig) -> AnomalyCLIPConfig:
    """``base`` (e.g. a profile's config) with the changes of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    changes, derive = PRESETS[name]
    config = base.replace(**changes)
    return derive(config) if derive else config


class AnomalyCLIP(nn.Module):
    """AnomalyCLIP on a frozen open_clip CLIP; only ``prompt_learner`` is trained."""

    def __init__(self, clip, config: AnomalyCLIPConfig = AnomalyCLIPConfig()):
        super().__init__()
        self.config = config
        self.clip = freeze(clip).eval()
        self.prompt_learner = PromptLearner(
            clip, n_ctx=config.n_ctx, depth=config.depth, t_n_ctx=config.t_n_ctx,
            object_agnostic=config.object_agnostic, deep_prompt_fp16=config.deep_prompt_fp16,
        )
        if config.text_source in HANDWRITTEN_TEXT:  # hand-written prompts: the learner is unused, nothing trains
            self.prompt_learner.requires_grad_(False)
        self._ensemble_cache: dict[str, torch.Tensor] = {}
        self._learned_cache: dict[tuple, torch.Tensor] = {}

    def variant(self, **changes) -> "AnomalyCLIP":
        """This model with inference-time config ``changes`` (e.g. ``dpam_mode="qq"``): a second view
        sharing the same frozen CLIP and trained prompt learner, so nothing is copied or retrained
        and this model's own config is left as it is."""
        twin = copy.copy(self)
        twin.config = self.config.replace(**changes)
        return twin

    def train(self, mode: bool = True) -> "AnomalyCLIP":
        super().train(mode)
        self.clip.eval()  # the backbone never leaves eval mode
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes (``methods.LearningModel``): the prompt learner's state."""
        return learned_state(self, "prompt_learner")

    # --- image side -----------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(g [B, D], patches)``: global embedding and ``[B, 1+g*g, D]`` tokens per feature layer.

        ``g`` is the original path's final CLS times ``proj`` **without** ``ln_post``
        (official quirk, fixtures §5.1) unless ``global_ln_post``; tokens get ``ln_post``
        and ``proj``. Runs without gradients, as the official encoder.
        """
        visual = self.clip.visual
        cfg = self.config
        final, tokens = dpam_tokens(visual, x, cfg.features, cfg.dpam_blocks, cfg.dpam_mode)
        cls = final[:, 0]  # [B, W]
        g = project_tokens(visual, cls) if cfg.global_ln_post else cls @ visual.proj  # [B, D]
        return g, [project_tokens(visual, t) for t in tokens]

    # --- text side ------------------------------------------------------------------
    def text_features(self, class_names: str | Sequence[str] | None = None) -> torch.Tensor:
        """``[2, D]`` L2-normalised [normal, anomalous] features, or ``[B, 2, D]`` for a list of
        class names when the prompts depend on the class (object-aware / ensemble)."""
        if isinstance(class_names, str) or class_names is None or self.class_independent:
            name = class_names if isinstance(class_names, str) else (class_names[0] if class_names else None)
            return self._text_for(name)
        unique = {name: self._text_for(name) for name in dict.fromkeys(class_names)}
        return torch.stack([unique[name] for name in class_names])  # [B, 2, D]

    @property
    def class_independent(self) -> bool:
        """Are the text features the same for every class (learned object-agnostic prompts)?"""
        return self.config.text_source == "learned" and self.config.object_agnostic

    def _text_for(self, class_name: str | None) -> torch.Tensor:
        if self.config.text_source in HANDWRITTEN_TEXT:
            name = class_name or "object"
            if name not in self._ensemble_cache:
                # kept fp32 even when first computed under autocast (a later fp32 call can use it)
                self._ensemble_cache[name] = HANDWRITTEN_TEXT[self.config.text_source](self.clip, name).float()
            return self._ensemble_cache[name].to(self.clip.visual.proj.device)
        name = None if self.class_independent else class_name
        if torch.is_grad_enabled():  # training: a fresh, differentiable forward
            return self.prompt_learner.text_features(self.clip, name)
        # Inference: the prompts only change when a parameter is written in place (optimizer step,
        # load_state_dict), which bumps its version counter; reuse the features until then.
        key = (name, tuple(p._version for p in self.prompt_learner.parameters()))
        if key not in self._learned_cache:
            self._learned_cache.clear()
            # kept fp32 even when first computed under autocast (a later fp32 call can use it)
            self._learned_cache[key] = self.prompt_learner.text_features(self.clip, name).float()
        return self._learned_cache[key]

    # --- maps and scores ------------------------------------------------------------
    def layer_similarity_maps(self, patches: list[torch.Tensor], text: torch.Tensor) -> list[torch.Tensor]:
        """Per feature layer, ``[B, 2, S, S]`` upsampled [normal, anomalous] probabilities."""
        size, temperature = self.config.image_size, self.config.temperature
        return [similarity_maps(patch_probabilities(p, text, temperature), size) for p in patches]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, class_names: str | Sequence[str] | None = None,
                smooth: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [B], maps [B, S, S])``: image anomaly probability and the (smoothed) anomaly map.

        Unlike the official ``test.py`` (which returns image 0's score for every image of a
        batch), every image gets its own score at any batch size.
        """
        return self.predict_with_text(x, self.text_features(class_names), smooth)

    @torch.no_grad()
    def predict_with_text(self, x: torch.Tensor, text: torch.Tensor,
                          smooth: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict` with the text features ``[2, D]`` or ``[B, 2, D]`` already computed: the
        image path alone (what :mod:`zsadlab.export` puts in an ONNX graph, the text as constants)."""
        g, patches = self.encode_image(x)
        maps = anomaly_map([layer_anomaly_map(m) for m in self.layer_similarity_maps(patches, text)])
        scores = image_scores(g, text, self.config.temperature)
        return scores, gaussian_smooth(maps, self.config.sigma) if smooth else maps

    def losses(self, x: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
               class_names: str | Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The training losses of one batch (fixtures §5.4).

        Returns ``focal``, ``dice_anomalous``, ``dice_normal`` (each ``[L]``, per feature layer),
        ``pixel`` (= lam * their sum), ``image`` (CE) and ``total`` - the differentiable sum of
        the terms enabled by ``config.loss``.
        """
        g, patches = self.encode_image(x)
        text = self.text_features(class_names)
        terms = L.local_loss_terms(self.layer_similarity_maps(patches, text), masks)
        terms["pixel"] = self.config.lam * sum(t.sum() for t in terms.values())
        terms["image"] = L.image_loss(similarity_logits(g, text, self.config.temperature), labels)
        use_global, use_local = L.LOSS_SETTINGS[self.config.loss]
        terms["total"] = use_global * terms["image"] + use_local * terms["pixel"]
        return terms


# --- training and official checkpoints -------------------------------------------------


def batch_losses(model: AnomalyCLIP, batch: dict) -> dict[str, torch.Tensor]:
    """The training step's losses of a collated batch (``image``, ``mask``, ``label``, ``class_name``)."""
    device = model.clip.visual.proj.device
    return model.losses(batch["image"].to(device), batch["mask"].to(device), batch["label"].to(device),
                        batch["class_name"])


def make_optimizer(model: AnomalyCLIP, lr: float | None = None,
                   betas: tuple[float, float] | None = None) -> torch.optim.Optimizer:
    """The official optimizer: Adam over the prompt learner, lr 1e-3, betas (0.5, 0.999) (train.py)."""
    if not any(p.requires_grad for p in model.prompt_learner.parameters()):
        raise ValueError("this model has nothing to train: its text comes from the hand-written prompt ensemble "
                         "(the clip / clip_ac baselines are zero-shot); train 'anomalyclip' or 'coop' instead")
    return torch.optim.Adam(model.prompt_learner.parameters(), lr=lr or 1e-3, betas=betas or (0.5, 0.999))


def checkpoint_kind(state) -> str:
    """``"anomalyclip"`` for a prompt learner with deep text prompts (``compound_prompts_text.*``,
    depth > 1), ``"coop"`` for one without (learnable context only), ``"unknown"`` otherwise."""
    learner = state.get("prompt_learner") if isinstance(state, dict) else None
    if not isinstance(learner, dict):
        return "unknown"
    return "anomalyclip" if any(str(k).startswith("compound_prompts_text.") for k in learner) else "coop"


def _refuse_other_kind(model: AnomalyCLIP, path: str | Path) -> None:
    """One line when the file is a CoOp checkpoint given to AnomalyCLIP, or the reverse."""
    kind = checkpoint_kind(read_checkpoint(path, what="AnomalyCLIP checkpoint"))
    wanted = "anomalyclip" if model.config.depth > 1 else "coop"
    if kind not in ("unknown", wanted):
        deep = "deep text prompts" if kind == "anomalyclip" else "no deep text prompts"
        article = {"anomalyclip": "an", "coop": "a"}
        raise CheckpointError(f"{path} is {article[kind]} {kind} checkpoint ({deep}), not {article[wanted]} {wanted} "
                              f"one: load it with --method {kind} (engine.build_model('{kind}', ...)).")


def load_official_checkpoint(model: AnomalyCLIP, path: str | Path) -> AnomalyCLIP:
    """Load an official ``{"prompt_learner": state_dict}`` file (e.g. ``epoch_15.pth``) safely; a CoOp
    checkpoint given to AnomalyCLIP (or the reverse) is named as such."""
    _refuse_other_kind(model, path)
    load_submodule_checkpoint(model.prompt_learner, path, "prompt_learner", "AnomalyCLIP checkpoint",
                              "Check n_ctx / depth / t_n_ctx and the backbone width against the checkpoint.")
    return model


def save_official_checkpoint(model: AnomalyCLIP, path: str | Path) -> Path:
    """Write ``{"prompt_learner": state_dict}`` atomically, the official format."""
    state = {k: v.detach().cpu() for k, v in model.prompt_learner.state_dict().items()}
    return save_torch_atomic({"prompt_learner": state}, path)


def save_epoch_checkpoint(model: AnomalyCLIP, out_dir: str | Path, epoch: int) -> Path:
    """``out_dir/epoch_<epoch>.pth``, the official file name (train.py, ``--save_freq 1``)."""
    return save_official_checkpoint(model, Path(out_dir) / f"epoch_{epoch}.pth")


# --- registration: the method, its baselines and their per-profile setups -------------------------

# What each preset learns: the hand-written-ensemble baselines learn nothing.
PRESET_LEARNS = {"anomalyclip": "prompts", "anomalyclip_multilayer": "prompts", "coop": "prompts",
                 "clip_ac": "nothing", "clip": "nothing"}

RECIPE = masked_test_split_recipe(make_optimizer, batch_losses, save_epoch_checkpoint)  # official train.py

# Per profile: the backbone and the base config every preset starts from.
SETUPS: dict[str, Setup] = {
    # The paper's setup (PROTOCOL.md): ViT-L-14-336 (OpenAI) at 518 px, block 24 with lam 4 (the published
    # configuration), DPAM on the last 19 blocks, 15 epochs of 8.
    "full": Setup(Backbone("ViT-L-14-336", "openai"), AnomalyCLIPConfig()),
    # The fixtures' tiny ViT-L-14, random weights: same code paths, CPU, minutes.
    "smoke": Setup(tiny_backbone("vit14-112"),
                   AnomalyCLIPConfig(features=(8,), dpam_blocks=5, epochs=1, batch_size=4,
                                     image_size=tiny_image_size("vit14-112")), eval_batch_size=4),
}
SETUPS["lab"] = SETUPS["full"]  # the lab profile: the full setup, within its budget (profiles.py)


def preset_method(preset: str) -> Method:
    """The registry entry of preset ``preset``: its config in every profile is the preset applied to
    :data:`SETUPS`' (official seed 111: train.py ``--seed``; fp32, as the official code runs)."""
    learning = PRESET_LEARNS[preset] != "nothing"
    setups = {profile: dataclasses.replace(setup, config=preset_config(preset, setup.config))
              for profile, setup in SETUPS.items()}
    return Method(name=preset, learns=PRESET_LEARNS[preset], setups=setups, config_class=AnomalyCLIPConfig,
                  seed=111, build=clip_model_builder(AnomalyCLIP),
                  load=load_official_checkpoint if learning else None, recipe=RECIPE if learning else None)


for _preset in PRESETS:
    register_method(preset_method(_preset))
