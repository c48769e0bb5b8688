"""Run profiles: ``full`` (real CLIP weights, real datasets, GPU) and ``smoke`` (tiny CPU models).

A profile only *chooses* things: per method family a backbone and a config
(image size, feature blocks, training recipe), and the default datasets. Both
profiles run exactly the same code paths; the methods never branch on the profile.
``auto`` picks ``full`` when the weights of all three full backbones (ViT-L-14-336 ``openai``,
ViT-B-16-plus-240 ``laion400m_e31`` for WinCLIP and ``laion400m_e32`` for InCTRL: one file per
tag) are on disk and ``smoke`` otherwise, with a banner, printed once, that names the missing weights.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .anomalyclip import AnomalyCLIPConfig
from .backbone import TINY_CLIPS, load_clip, tiny_clip, weights_available
from .inctrl import InCTRLConfig
from .vand import VANDConfig
from .winclip import BACKBONE as WINCLIP_BACKBONE, PRETRAINED as WINCLIP_PRETRAINED, WinCLIPConfig

TINY_PREFIX = "tiny-"


@dataclass(frozen=True)
class Backbone:
    """Which CLIP to build: an open_clip ``name`` + ``pretrained`` tag, or ``tiny-<kind>`` with a seed."""

    name: str
    pretrained: str | None = None

    @property
    def is_tiny(self) -> bool:
        return self.name.startswith(TINY_PREFIX)

    def build(self, device: str | torch.device | None = None, seed: int = 0):
        """The CLIP model (fp32, eval mode) on ``device``."""
        if self.is_tiny:
            return tiny_clip(self.name[len(TINY_PREFIX):], seed=seed).to(device or "cpu")
        return load_clip(self.name, self.pretrained, device=device)

    def available(self) -> bool:
        return self.is_tiny or weights_available(self.name, self.pretrained)


@dataclass(frozen=True)
class MethodSetup:
    """What a profile chooses for one method family: its backbone and its config (sizes, blocks, recipe)."""

    backbone: Backbone
    config: Any  # the method's config dataclass, e.g. AnomalyCLIPConfig


@dataclass(frozen=True)
class Profile:
    """Everything that differs between a real run and a CPU smoke run, chosen per method.

    ``profile.config("inctrl")`` is the InCTRL config at this profile's sizes and recipe,
    ``profile.backbone("inctrl")`` its CLIP. No field belongs to two methods; AnomalyCLIP's
    presets (clip, clip_ac, coop, ...) start from the ``"anomalyclip"`` setup.
    """

    name: str
    setups: Mapping[str, MethodSetup]
    train_dataset: str
    test_dataset: str
    meaningful: bool  # are its numbers comparable with the papers?

    def setup(self, method: str) -> MethodSetup:
        if method not in self.setups:
            raise ValueError(f"profile {self.name!r} has no setup for {method!r}; it has {sorted(self.setups)}")
        return self.setups[method]

    def config(self, method: str):
        """The config dataclass of ``method`` ("anomalyclip", "inctrl") at this profile's sizes and recipe."""
        return self.setup(method).config

    def backbone(self, method: str) -> Backbone:
        """The CLIP that ``method`` runs on in this profile."""
        return self.setup(method).backbone

    # Read-only aliases of the former flat fields, kept because the notebooks read them.
    # ``epochs`` / ``batch_size`` are AnomalyCLIP's recipe: use ``config("inctrl")`` for InCTRL's.
    epochs = property(lambda self: self.config("anomalyclip").epochs)
    batch_size = property(lambda self: self.config("anomalyclip").batch_size)
    anomalyclip_backbone = property(lambda self: self.backbone("anomalyclip"))
    anomalyclip_image_size = property(lambda self: self.config("anomalyclip").image_size)
    anomalyclip_features = property(lambda self: self.config("anomalyclip").features)
    anomalyclip_dpam_blocks = property(lambda self: self.config("anomalyclip").dpam_blocks)
    inctrl_backbone = property(lambda self: self.backbone("inctrl"))
    inctrl_image_size = property(lambda self: self.config("inctrl").image_size)


PROFILES: dict[str, Profile] = {
    # The papers' setups (PROTOCOL.md): ViT-L-14-336 (OpenAI) at 518 px, block 24 with lam 4 (the published configuration),
    # DPAM on the last 19 blocks, 15 epochs of 8; InCTRL on ViT-B-16-plus-240 (LAION-400M e32) at 240 px,
    # layers 7/9/11, 10 epochs of 100 balanced batches of 16.
    "full": Profile(
        name="full",
        setups={
            "anomalyclip": MethodSetup(Backbone("ViT-L-14-336", "openai"), AnomalyCLIPConfig()),
            "inctrl": MethodSetup(Backbone("ViT-B-16-plus-240", "laion400m_e32"), InCTRLConfig()),
            "winclip": MethodSetup(Backbone(WINCLIP_BACKBONE, WINCLIP_PRETRAINED), WinCLIPConfig()),
            # VAND (APRIL-GAN) as its paper: ViT-L-14-336 at 518 px, blocks 6/12/18/24, the official model build.
            "vand": MethodSetup(Backbone("ViT-L-14-336", "openai"), VANDConfig()),
        },
        train_dataset="mvtec",
        test_dataset="visa",
        meaningful=True,
    ),
    # The fixtures' tiny architectures, random weights: same code paths, CPU, minutes.
    "smoke": Profile(
        name="smoke",
        setups={
            "anomalyclip": MethodSetup(
                Backbone(TINY_PREFIX + "anomalyclip"),
                AnomalyCLIPConfig(features=(8,), dpam_blocks=5, epochs=1, batch_size=4,
                                  image_size=TINY_CLIPS["anomalyclip"].vision["image_size"])),
            "inctrl": MethodSetup(
                Backbone(TINY_PREFIX + "inctrl"),
                InCTRLConfig(image_size=TINY_CLIPS["inctrl"].vision["image_size"], epochs=1, batch_size=8,
                             steps_per_epoch=6)),
            "winclip": MethodSetup(Backbone(TINY_PREFIX + "inctrl"),
                                   WinCLIPConfig(image_size=TINY_CLIPS["inctrl"].vision["image_size"])),
            "vand": MethodSetup(
                Backbone(TINY_PREFIX + "anomalyclip"),
                VANDConfig(features=(2, 4, 6, 8), image_size=TINY_CLIPS["anomalyclip"].vision["image_size"],
                           epochs=1, batch_size=4)),
        },
        train_dataset="synthetic_industrial",
        test_dataset="synthetic_ultrasound",
        meaningful=False,
    ),
}

SMOKE_BANNER = (
    "zsadlab: SMOKE profile - tiny random CLIP and synthetic data on the CPU. The code paths are the real "
    "ones, but the numbers are NOT meaningful. For real results install the weights (see README, "
    "'Full profile') and run with profile='full'."
)


@functools.lru_cache(maxsize=None)
def _print_banner_once(text: str) -> None:
    print("=" * 100 + "\n" + text + "\n" + "=" * 100)


@functools.lru_cache(maxsize=None)
def _print_once(text: str) -> None:
    print(text)


def missing_full_weights() -> list[Backbone]:
    """The full profile's backbones, one per (model, pretrained tag), whose weights are not on this machine."""
    backbones = dict.fromkeys(setup.backbone for setup in PROFILES["full"].setups.values())
    return [backbone for backbone in backbones if not backbone.available()]


def get_profile(name: str = "auto", quiet: bool = False) -> Profile:
    """The profile called ``name`` (``full``, ``smoke`` or ``auto``).

    ``auto`` is ``full`` when the weights of every full backbone (three: one per model and tag)
    are already on this machine, else ``smoke``. Choosing smoke prints :data:`SMOKE_BANNER` once per process;
    under ``auto`` it names the missing weights.
    """
    missing = []
    if name == "auto":
        missing = missing_full_weights()
        name = "smoke" if missing else "full"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES) + ['auto']}")
    profile = PROFILES[name]
    if not profile.meaningful and not quiet:
        _print_banner_once(SMOKE_BANNER)
        if missing:
            _print_once("zsadlab: auto chose smoke; missing full-profile weights: "
                        + ", ".join(f"{b.name} ({b.pretrained})" for b in missing)
                        + " (see README, 'Weights: one file per backbone')")
    return profile
