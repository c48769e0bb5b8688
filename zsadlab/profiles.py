"""Run profiles: ``full`` (real CLIP weights, real datasets, GPU) and ``smoke`` (tiny CPU models).

A profile only *chooses* things - backbones, image sizes, feature blocks,
datasets, epochs. Both profiles run exactly the same code paths; the methods
never branch on the profile. ``auto`` picks ``full`` when the real AnomalyCLIP
weights are on disk and ``smoke`` otherwise, with a banner printed once.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .backbone import TINY_CLIPS, load_clip, tiny_clip, weights_available

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
class Profile:
    """Everything that differs between a real run and a CPU smoke run."""

    name: str
    anomalyclip_backbone: Backbone
    anomalyclip_image_size: int
    anomalyclip_features: tuple[int, ...]
    anomalyclip_dpam_blocks: int
    inctrl_backbone: Backbone
    inctrl_image_size: int
    inctrl_layers: tuple[int, ...]
    train_dataset: str
    test_dataset: str
    epochs: int  # AnomalyCLIP training
    batch_size: int
    inctrl_epochs: int
    inctrl_batch_size: int  # half normal, half anomalous
    inctrl_steps_per_epoch: int
    meaningful: bool  # are its numbers comparable with the papers?


PROFILES: dict[str, Profile] = {
    # SPEC §1-2: ViT-L-14-336 (OpenAI) at 518 px, features 6/12/18/24, DPAM on the last 19 blocks;
    # InCTRL on ViT-B-16-plus-240 (LAION-400M e32) at 240 px, layers 7/9/11.
    "full": Profile(
        name="full",
        anomalyclip_backbone=Backbone("ViT-L-14-336", "openai"),
        anomalyclip_image_size=518,
        anomalyclip_features=(6, 12, 18, 24),
        anomalyclip_dpam_blocks=19,
        inctrl_backbone=Backbone("ViT-B-16-plus-240", "laion400m_e32"),
        inctrl_image_size=240,
        inctrl_layers=(7, 9, 11),
        train_dataset="mvtec",
        test_dataset="visa",
        epochs=15,
        batch_size=8,
        inctrl_epochs=10,
        inctrl_batch_size=16,
        inctrl_steps_per_epoch=100,
        meaningful=True,
    ),
    # The fixtures' tiny architectures, random weights: same code paths, CPU, minutes.
    "smoke": Profile(
        name="smoke",
        anomalyclip_backbone=Backbone(TINY_PREFIX + "anomalyclip"),
        anomalyclip_image_size=TINY_CLIPS["anomalyclip"].vision["image_size"],
        anomalyclip_features=(2, 4, 6, 8),
        anomalyclip_dpam_blocks=5,
        inctrl_backbone=Backbone(TINY_PREFIX + "inctrl"),
        inctrl_image_size=TINY_CLIPS["inctrl"].vision["image_size"],
        inctrl_layers=(7, 9, 11),
        train_dataset="synthetic_industrial",
        test_dataset="synthetic_ultrasound",
        epochs=1,
        batch_size=4,
        inctrl_epochs=1,
        inctrl_batch_size=8,
        inctrl_steps_per_epoch=6,
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


def get_profile(name: str = "auto", quiet: bool = False) -> Profile:
    """The profile called ``name`` (``full``, ``smoke`` or ``auto``).

    ``auto`` is ``full`` when the full AnomalyCLIP weights are already on this
    machine, else ``smoke``. Choosing smoke prints :data:`SMOKE_BANNER` once per process.
    """
    if name == "auto":
        name = "full" if PROFILES["full"].anomalyclip_backbone.available() else "smoke"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES) + ['auto']}")
    profile = PROFILES[name]
    if not profile.meaningful and not quiet:
        _print_banner_once(SMOKE_BANNER)
    return profile
