"""Text prompts: hand-written ensembles and AnomalyCLIP's learnable prompts.

Four ways of turning "normal" and "anomalous" into text features:

0. **Two plain prompts** (the AnomalyCLIP paper's CLIP baseline): "A photo of a normal [cls]."
   and "A photo of an anomalous [cls]." (:func:`plain_text_features`).
1. **Object-aware prompt ensemble** (the CLIP-AC baseline, WinCLIP-style):
   7 normal x 5 abnormal states of the class name, each in 35 templates, encoded,
   normalised, averaged (``encode_text_with_prompt_ensemble`` of the official
   AnomalyCLIP repo; fixtures/anomalyclip §5.5).
2. **Object-agnostic learnable prompts** (AnomalyCLIP, paper §3.2, Eq. 2):
   ``[V1]..[V12] object.`` and ``[W1]..[W12] damaged object.`` with learnable
   context vectors; the object-aware variant (CoOp-like, ablation T2) puts the
   class name instead of "object".
3. **Deep text tokens** (paper §3.3, "text prompt tuning"): learnable tokens that
   overwrite positions 1..t_n_ctx before text blocks 2..depth (fixtures §5.3).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import encode_text, encode_text_embeddings, tokenize

# --- the paper's CLIP baseline: two plain prompts -------------------------------------------

PLAIN_PROMPTS = ("A photo of a normal {}.", "A photo of an anomalous {}.")


def plain_sentences(class_name: str) -> tuple[str, str]:
    """The CLIP baseline's [normal, anomalous] sentences for ``class_name`` (underscores read as spaces)."""
    name = class_name.replace("_", " ")
    return PLAIN_PROMPTS[0].format(name), PLAIN_PROMPTS[1].format(name)


@torch.no_grad()
def plain_text_features(clip, class_name: str) -> torch.Tensor:
    """``[2, D]`` L2-normalised [normal, anomalous] features of the two plain prompts (AnomalyCLIP
    paper, App. "baselines": CLIP with "A photo of a normal [cls]." / "A photo of an anomalous [cls].")."""
    return F.normalize(encode_text(clip, tokenize(list(plain_sentences(class_name)))), dim=-1)


# --- the ensemble: fixtures/anomalyclip §5.5 -------------------------------------------

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}",
                 "{} without flaw", "{} without defect", "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
ENSEMBLE_TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.",
    "a photo of my {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "a low resolution photo of a {}.", "a photo of a large {}.",
    "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a photo of the small {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "a dark photo of a {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
)


def state_major_sentences(class_name: str, states: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every state of ``class_name``, state-major (all templates of state 1 first)."""
    return [template.format(state.format(class_name)) for state in states for template in templates]


def ensemble_sentences(class_name: str) -> tuple[list[str], list[str]]:
    """The 245 normal and 175 abnormal sentences of the object-aware ensemble."""
    return (state_major_sentences(class_name, NORMAL_STATES, ENSEMBLE_TEMPLATES),
            state_major_sentences(class_name, ABNORMAL_STATES, ENSEMBLE_TEMPLATES))


def mean_text_feature(clip, sentences: Sequence[str]) -> torch.Tensor:
    """Encode, L2-normalise each, average, re-normalise: one ``[D]`` prototype for a list of sentences."""
    features = F.normalize(encode_text(clip, tokenize(sentences)), dim=-1)  # [P, D]
    return F.normalize(features.mean(dim=0), dim=-1)  # [D]


@torch.no_grad()
def ensemble_text_features(clip, class_name: str) -> torch.Tensor:
    """``[2, D]`` L2-normalised [normal, abnormal] features of the prompt ensemble (fixtures §5.5)."""
    normal, abnormal = ensemble_sentences(class_name.replace("_", " "))
    return torch.stack([mean_text_feature(clip, normal), mean_text_feature(clip, abnormal)])


# --- learnable prompts: fixtures/anomalyclip §5.3 ----------------------------------------

UNUSED_PROJECTION_WIDTH = 896  # official quirk: Linear(width, 896) projections, never used
CONTEXT_TOKEN = "X"


class PromptLearner(nn.Module):
    """AnomalyCLIP's learnable text prompts, with the official ``state_dict`` layout.

    ``object_agnostic=True`` (AnomalyCLIP): the prompts are ``[V]*n_ctx object.`` and
    ``[W]*n_ctx damaged object.``; their token buffers are stored under the official
    names (``token_prefix_pos``, ``token_suffix_neg``...) so official checkpoints load
    unchanged. ``object_agnostic=False`` (ablation T2, CoOp-like): the same shared
    contexts, with the class name instead of "object".

    ``depth`` counts text blocks with learnable tokens, including the first one that
    sees the input (official ``learnabel_text_embedding_depth``): ``depth - 1`` deep
    prompts of ``t_n_ctx`` tokens each; ``depth=1`` disables them (ablation T3).
    """

    def __init__(self, clip, n_ctx: int = 12, depth: int = 9, t_n_ctx: int = 4,
                 object_agnostic: bool = True, deep_prompt_fp16: bool = False):
        super().__init__()
        if depth < 1 or depth > len(clip.transformer.resblocks):
            raise ValueError(f"depth must be in 1..{len(clip.transformer.resblocks)} text blocks, got {depth}")
        width = clip.ln_final.weight.shape[0]
        self.n_ctx, self.depth, self.t_n_ctx = n_ctx, depth, t_n_ctx
        self.object_agnostic = object_agnostic
        self.deep_prompt_fp16 = deep_prompt_fp16
        # Same creation order as the official learner (so one seed gives the same init).
        ctx_pos = nn.init.normal_(torch.empty(1, 1, n_ctx, width), std=0.02)  # [n_cls, n_states, n_ctx, W]
        ctx_neg = nn.init.normal_(torch.empty(1, 1, n_ctx, width), std=0.02)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(nn.init.normal_(torch.empty(t_n_ctx, width), std=0.02)) for _ in range(depth - 1)]
        )
        projection = nn.Linear(width, UNUSED_PROJECTION_WIDTH)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(projection) for _ in range(depth - 1)])
        self.ctx_pos = nn.Parameter(ctx_pos)
        self.ctx_neg = nn.Parameter(ctx_neg)
        self._embed = _FrozenTokenEmbedding(clip)
        for suffix, state in (("pos", "{}"), ("neg", "damaged {}")):
            tokens = self.prompt_tokens(state.format("object"))  # [1, 77]
            embedding = self._embed(tokens)  # [1, 77, W]
            self.register_buffer(f"token_prefix_{suffix}", embedding[:, None, :1].clone())
            self.register_buffer(f"token_suffix_{suffix}", embedding[:, None, 1 + n_ctx:].clone())
            self.register_buffer(f"tokenized_prompts_{suffix}", tokens[:, None].to(torch.int32).clone())
        self._class_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prompt_tokens(self, described_object: str) -> torch.Tensor:
        """Token ids ``[1, 77]`` of ``"X X ... X <described object>."``."""
        return tokenize(" ".join([CONTEXT_TOKEN] * self.n_ctx) + " " + described_object + ".")

    def _frozen_parts(self, class_name: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prefix [2,1,W], suffix [2,L,W])`` and EOT positions ``[2]`` for [normal, anomalous]."""
        if self.object_agnostic or class_name is None:
            prefix = torch.cat([self.token_prefix_pos[0, :, 0:1], self.token_prefix_neg[0, :, 0:1]])
            suffix = torch.cat([self.token_suffix_pos[0], self.token_suffix_neg[0]])
            tokens = torch.cat([self.tokenized_prompts_pos[0], self.tokenized_prompts_neg[0]])
            return (prefix, suffix), tokens.argmax(dim=-1)
        if class_name not in self._class_cache:
            name = class_name.replace("_", " ")
            tokens = torch.cat([self.prompt_tokens(name), self.prompt_tokens(f"damaged {name}")])  # [2, 77]
            self._class_cache[class_name] = (self._embed(tokens), tokens.argmax(dim=-1))
        embedding, eot = self._class_cache[class_name]
        device = self.ctx_pos.device
        return (embedding[:, :1].to(device), embedding[:, 1 + self.n_ctx:].to(device)), eot.to(device)

    def prompt_embeddings(self, class_name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-encoder input ``[2, 77, W]`` ([normal, anomalous], before the positional
        embedding) and the EOT positions ``[2]`` (``text.npz:prompt_embeddings_input``)."""
        (prefix, suffix), eot = self._frozen_parts(class_name)
        ctx = torch.cat([self.ctx_pos[0], self.ctx_neg[0]])  # [2, n_ctx, W]
        return torch.cat([prefix, ctx, suffix], dim=1), eot

    def deep_prompt_hook(self):
        """``before_block(i, x)``: overwrite positions ``1..t_n_ctx`` before blocks ``2..depth``."""
        def before_block(index: int, x: torch.Tensor) -> torch.Tensor:
            if not 2 <= index <= self.depth:
                return x
            prompt = self.compound_prompts_text[index - 2]  # [t_n_ctx, W]
            if self.deep_prompt_fp16:  # official quirk (§5.3): .half() before insertion
                prompt = prompt.half().to(x.dtype)
            prompt = prompt.expand(x.shape[0], -1, -1)  # [P, t_n_ctx, W]
            return torch.cat([x[:, :1], prompt, x[:, 1 + self.t_n_ctx:]], dim=1)
        return before_block

    def text_features(self, clip, class_name: str | None = None) -> torch.Tensor:
        """``[2, D]`` L2-normalised [normal, anomalous] text features (fixtures §5.2-5.3)."""
        embeddings, eot = self.prompt_embeddings(class_name)
        features = encode_text_embeddings(clip, embeddings, eot, before_block=self.deep_prompt_hook())
        return F.normalize(features, dim=-1)


class _FrozenTokenEmbedding:
    """CLIP's token embedding as a frozen function (kept out of the learner's parameters)."""

    def __init__(self, clip):
        self._table = clip.token_embedding

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._table(tokens.to(self._table.weight.device)).float()  # [P, 77, W]


# --- InCTRL's text prior: the official get_texts (fixtures/inctrl §3.6) -------------------

INCTRL_ABNORMAL_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
INCTRL_TEMPLATES = (
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
    "a close-up photo of the {}.", "a bright photo of a {}.", "a bright photo of the {}.",
    "a dark photo of a {}.", "a dark photo of the {}.", "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.", "a blurry photo of a {}.",
    "a photo of the {}.", "a photo of a {}.", "a photo of a small {}.", "a photo of the small {}.",
    "a photo of a large {}.", "a photo of the large {}.", "a photo of a {} for visual inspection.",
    "a photo of the {} for visual inspection.", "a photo of a {} for anomaly detection.",
    "a photo of the {} for anomaly detection.",
)
# Semantic-anomaly classes (CIFAR-10 style): one prompt per side instead of the ensemble.
INCTRL_SINGLE_PROMPT_CLASSES = frozenset({"airplane", "automobile", "bird", "cat", "deer", "dog",
                                          "frog", "horse", "ship", "truck", "animal"})


def inctrl_prompt_texts(class_name: str) -> tuple[list[str], list[str]]:
    """InCTRL's (normal, anomaly) sentences: 7 x 22 = 154 and 4 x 22 = 88, state-major.

    Underscores become spaces first; the semantic-anomaly class names get the single
    pair "a photo of X ..." / "a photo without X ..." (fixtures/inctrl §3.6).
    """
    name = class_name.replace("_", " ")
    if name in INCTRL_SINGLE_PROMPT_CLASSES:
        return [f"a photo of {name} for anomaly detection."], [f"a photo without {name} for anomaly detection."]
    return (state_major_sentences(name, NORMAL_STATES, INCTRL_TEMPLATES),
            state_major_sentences(name, INCTRL_ABNORMAL_STATES, INCTRL_TEMPLATES))
