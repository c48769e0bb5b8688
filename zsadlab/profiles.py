"""Run profiles: ``full`` (real CLIP weights, real datasets, GPU), ``lab`` (the same within a budget of
about one GPU-hour per notebook) and ``smoke`` (tiny CPU models).

A profile holds what is profile-wide: its datasets (auxiliary training set and zero-shot
target), whether its numbers mean anything and its default :class:`Budget` (``lab`` only). What it chooses *per method* - a backbone and
a config (image size, feature blocks, training recipe) - is declared by each method module as
its ``Setup`` for the profile's name (``Method.setups``); ``profile.config("inctrl")`` and
``profile.backbone("inctrl")`` look it up in the registry. Both profiles run exactly the same
code paths; the methods never branch on the profile. A new profile is one :data:`PROFILES`
entry here plus one ``Setup`` per method module.
``auto`` picks ``full`` when the weights of every full backbone are on disk (ViT-L-14-336 ``openai``,
ViT-B-16-plus-240 ``laion400m_e31`` for WinCLIP and ``laion400m_e32`` for InCTRL: one file per
tag) and ``smoke`` otherwise, with a banner, printed once, that names the missing weights; it never
picks ``lab``, which is chosen by name only (``--profile lab``, ``profile="lab"``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .backbone import Backbone
from .methods import Setup, get_method, method_names


@dataclass(frozen=True)
class Budget:
    """A profile's default budget, applied by :func:`zsadlab.notebook.start` wherever the notebook leaves
    its own budget parameter ``None`` (the notebook's value wins): the first ``classes_per_dataset``
    classes (sorted) of every dataset, at most ``max_images_per_class`` images per class (a seeded draw,
    both labels kept), and training schedules cut to ``steps_per_epoch`` steps per epoch - only where the
    full-schedule run is not already in the run cache (a course pack)."""

    classes_per_dataset: int | None = None
    max_images_per_class: int | None = None
    steps_per_epoch: int | None = None


@dataclass(frozen=True)
class Profile:
    """Everything that differs between a real run and a CPU smoke run.

    ``profile.config("inctrl")`` is the InCTRL config at this profile's sizes and recipe,
    ``profile.backbone("inctrl")`` its CLIP: the setup the method module declares for this
    profile. No field belongs to a method.
    """

    name: str
    train_dataset: str
    test_dataset: str
    meaningful: bool  # are its numbers comparable with the papers?
    budget: Budget | None = None  # the default budget of its notebooks (None: full data and schedules)

    def setup(self, method: str) -> Setup:
        """The :class:`~zsadlab.methods.Setup` registered ``method`` declares for this profile."""
        return get_method(method).setup(self.name)

    def config(self, method: str):
        """The config dataclass of ``method`` ("anomalyclip", "inctrl", ...) at this profile's sizes and recipe."""
        return self.setup(method).config

    def backbone(self, method: str) -> Backbone:
        """The CLIP that ``method`` runs on in this profile."""
        return self.setup(method).backbone

    @property
    def setups(self) -> dict[str, Setup]:
        """``{method: setup}`` of every registered method with a setup for this profile."""
        return {name: get_method(name).setups[self.name] for name in method_names()
                if self.name in get_method(name).setups}

    # Read-only aliases of the former flat fields, kept because the notebooks read them.
    # ``epochs`` is AnomalyCLIP's recipe: use ``config("inctrl")`` for InCTRL's.
    epochs = property(lambda self: self.config("anomalyclip").epochs)
    anomalyclip_backbone = property(lambda self: self.backbone("anomalyclip"))
    anomalyclip_image_size = property(lambda self: self.config("anomalyclip").image_size)
    anomalyclip_features = property(lambda self: self.config("anomalyclip").features)
    anomalyclip_dpam_blocks = property(lambda self: self.config("anomalyclip").dpam_blocks)
    inctrl_backbone = property(lambda self: self.backbone("inctrl"))
    inctrl_image_size = property(lambda self: self.config("inctrl").image_size)


PROFILES: dict[str, Profile] = {
    # The papers' setups (PROTOCOL.md; each method module's "full" Setup): MVTec AD -> VisA.
    "full": Profile(name="full", train_dataset="mvtec", test_dataset="visa", meaningful=True),
    # Tiny random CLIPs (each method module's "smoke" Setup), synthetic data: same code paths, CPU, minutes.
    # The full setups (each method module's "lab" Setup is its "full" one) and real data within a budget
    # that keeps every notebook at about one GPU-hour by the cost model (python -m zsadlab.series lab).
    # Real results on a stated subset: every table says the budget.
    "lab": Profile(name="lab", train_dataset="mvtec", test_dataset="visa", meaningful=True,
                   budget=Budget(classes_per_dataset=3, max_images_per_class=32, steps_per_epoch=6)),
    "smoke": Profile(name="smoke", train_dataset="synthetic_industrial", test_dataset="synthetic_ultrasound",
                     meaningful=False),
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
    backbones = dict.fromkeys(setup.backbone for setup in PROFILES["full"].setups.values())  # each once, in order
    return [backbone for backbone in backbones if not backbone.available()]


def get_profile(name: str = "auto", quiet: bool = False) -> Profile:
    """The profile called ``name`` (``full``, ``lab``, ``smoke`` or ``auto``).

    ``auto`` is never ``lab``: it is ``full`` when the weights of every full backbone (three: one per model and tag)
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
