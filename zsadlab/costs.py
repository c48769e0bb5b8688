"""The cost model: seconds per image of training and of prediction, per profile and method.

THE one table the course plan (``zsadlab course plan``) prices its runs with and the README's cost
columns are computed from (``python -m zsadlab.costs`` prints them). A training costs
``images x epochs`` (the images its plan draws per epoch, capped by a step budget) times the
family's seconds per training image; every figure says whether it was measured or estimated.
Replace an estimate by a measurement (``benchmarks/gpu_check.sh`` on a GPU) here, nowhere else.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    """Seconds per image on one device: a training image (forward + backward) and a predicted image."""

    train_s: float
    predict_s: float
    source: str  # how the figures were obtained: "measured: <command>" or "estimate: <from what>"


# (profile, method) -> Cost, for every method that trains and for the training-free ones (their evaluations).
_ANOMALYCLIP_FULL = Cost(0.48, 0.48, "estimate: the AnomalyCLIP authors' reported 13.71 min per MVTec AD epoch (1725 "
                                     "images) on one RTX 3090; prediction taken equal")
_SMOKE = ("measured: `zsadlab course train --workers 2 --device cpu` on the smoke plan (19 runs; run folders' "
          "wall_time.json over the plan's images x epochs), the busy 2-core test machine, model build included")
COSTS: dict[tuple[str, str], Cost] = {
    **{("full", m): _ANOMALYCLIP_FULL for m in ("anomalyclip", "anomalyclip_multilayer", "coop")},
    **{("full", m): Cost(0.0, 0.48, "estimate: AnomalyCLIP's prediction, same backbone (ViT-L-14-336) and 518 px")
       for m in ("clip", "clip_ac")},
    ("full", "musc"): Cost(0.0, 0.5, "estimate, rough: AnomalyCLIP's prediction (same backbone and size) plus the "
                                     "mutual scoring of a class's images, small at a budget's set sizes"),
    ("full", "vand"): Cost(0.48, 0.48, "estimate: AnomalyCLIP's, same backbone (ViT-L-14-336) and 518 px"),
    ("full", "inctrl"): Cost(0.1, 0.09, "estimate, rough: 2.1 s per query on 2 CPU cores (bench_inctrl.py) "
                                         "scaled by AnomalyCLIP's CPU-to-GPU ratio (about 23x)"),
    ("full", "winclip"): Cost(0.0, 0.2, "estimate, rough: many windows of ViT-B-16-plus-240 per image"),
    # The smoke profile on one CPU thread of the 2-core machine that runs the tests (busy):
    **{("smoke", m): Cost(0.10, 0.05, _SMOKE) for m in ("anomalyclip", "anomalyclip_multilayer")},
    ("smoke", "coop"): Cost(0.13, 0.05, _SMOKE),
    ("smoke", "vand"): Cost(0.18, 0.05, _SMOKE),
    ("smoke", "inctrl"): Cost(0.38, 0.05, _SMOKE + "; per query"),
    **{("smoke", m): Cost(0.0, 0.05, "estimate") for m in ("winclip", "clip", "clip_ac", "musc")},
}
# A profile without its own row (e.g. lab) runs the full backbones at full size: full's seconds.
SAME_DEVICE_COSTS = {"lab": "full"}


def cost(profile: str, method: str) -> Cost:
    """The :class:`Cost` of ``method`` in ``profile`` (a profile of the full backbones uses full's)."""
    key = (SAME_DEVICE_COSTS.get(profile, profile), method)
    if key not in COSTS:
        raise ValueError(f"the cost model has no row for {key}; add one to zsadlab/costs.py")
    return COSTS[key]


def training_minutes(profile: str, method: str, images_x_epochs: int) -> float:
    """Minutes of one device to train ``images_x_epochs`` images of ``method`` in ``profile``."""
    return images_x_epochs * cost(profile, method).train_s / 60


def prediction_minutes(profile: str, method: str, images: int) -> float:
    """Minutes of one device to predict ``images`` images with ``method`` in ``profile``."""
    return images * cost(profile, method).predict_s / 60


def table() -> str:
    """The cost model as a markdown table (what the README's cost section quotes)."""
    lines = ["| profile | method | s / training image | s / predicted image | source |", "|---|---|---|---|---|"]
    lines += [f"| {p} | {f} | {c.train_s:g} | {c.predict_s:g} | {c.source} |" for (p, f), c in COSTS.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
