"""The GPU check: speeds of every method at full size (random weights) and `course train` through CUDA.

One table, in at most about 5 minutes on one GPU (``benchmarks/gpu_check.sh``):

* AnomalyCLIP (ViT-L-14-336, 518 px, the published config): ``predict`` images/s and training
  steps/s at the official batch 8, fp32 and with AMP (``engine.train(amp=True)``'s fp16 autocast);
* InCTRL (ViT-B-16-plus-240, 240 px, k = 4 prompts): images/s; VAND (ViT-L-14-336, 518 px) and
  WinCLIP (ViT-B-16-plus-240, 240 px): ``predict`` images/s;
* ``zsadlab course train --workers 1`` on two tiny (smoke) runs on this device: seconds per run.

The models are the full profile's, built through ``engine.build_model`` with the real architectures
and random weights (nothing is downloaded). ``--quick`` uses the smoke profile's tiny backbones and
a few repeats: how the script is checked on a CPU. Results also go to ``--out`` (JSON).

    PYTHONPATH=. python benchmarks/gpu_check.py [--device cuda] [--quick] [--out build/bench/gpu_check.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import bench_anomalyclip  # benchmarks/, beside this script
import open_clip
import torch

from zsadlab import engine
from zsadlab.methods import Setup
from zsadlab.profiles import PROFILES, Backbone, Profile
from zsadlab.utils import pick_device, write_json_atomic

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class RandomBackbone(Backbone):
    """The real architecture with random weights (the check measures speed, not accuracy)."""

    def build(self, device=None, seed: int = 0):
        torch.manual_seed(seed)
        clip = open_clip.create_model(self.name, pretrained=None, force_quick_gelu=self.pretrained == "openai")
        return clip.float().eval().to(device or "cpu")


@dataclasses.dataclass(frozen=True)
class RandomFullProfile(Profile):
    """The full profile's setups (configs, sizes, recipes) with random-weight backbones."""

    def setup(self, method: str) -> Setup:
        setup = super().setup(method)
        return dataclasses.replace(setup, backbone=RandomBackbone(setup.backbone.name, setup.backbone.pretrained))


def random_full_profile() -> Profile:
    full = PROFILES["full"]
    return RandomFullProfile(**{field.name: getattr(full, field.name) for field in dataclasses.fields(Profile)})


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call (:func:`bench_anomalyclip.timed`)."""
    return statistics.median(bench_anomalyclip.timed(fn, repeats, device))


def images(model, batch: int, device) -> torch.Tensor:
    size = model.config.image_size
    return torch.randn(batch, 3, size, size, device=device)


def predict_rate(model, batch: int, repeats: int, device, amp: bool = False, names=None) -> float:
    x = images(model, batch, device)
    names = names or ["object"] * batch

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            model.predict(x, names)
    return batch / timed(run, repeats, device)


def train_rate(model, batch: int, repeats: int, device, amp: bool) -> float:
    """Optimisation steps per second of the method's own recipe step (as engine.train runs it)."""
    spec = engine.method_of(model)
    recipe = spec.recipe
    optimizer = recipe.optimizer(model)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    size = model.config.image_size
    data = {"image": torch.randn(batch, 3, size, size), "mask": (torch.rand(batch, size, size) > 0.9).float(),
            "label": torch.tensor([i % 2 for i in range(batch)]), "class_name": ["object"] * batch}
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            losses = recipe.step(model, data)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
    rate = 1 / timed(step, repeats, device)
    model.eval()
    return rate


def course_train_seconds(device: str) -> list[float]:
    """`course train --workers 1` on two tiny runs (notebook 04's, smoke, one step each) on ``device``."""
    from zsadlab.grid import train_plan
    from zsadlab.series import plan

    with tempfile.TemporaryDirectory() as tmp:
        params = {"profile": "smoke", "data_root": f"{tmp}/data", "steps_per_epoch": 1}
        runs = [r.as_json() for r in plan([REPO / "notebooks" / "04_global_local_optimization.ipynb"], params,
                                          cache=f"{tmp}/cache")][:2]
        lines: list[str] = []
        report = train_plan(runs, workers=1, logs=f"{tmp}/logs", device=device, echo=lines.append)
        if report["failed"] or len(report["trained"]) != 2:
            raise SystemExit("course train failed: " + " | ".join(lines))
        return [float(line.split(" in ")[1].split(" s")[0]) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny smoke backbones, few repeats (a CPU check)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "gpu_check.json")
    args = parser.parse_args()
    device = pick_device(args.device)
    repeats = args.repeats or (1 if args.quick else 5)
    profile = PROFILES["smoke"] if args.quick else random_full_profile()
    cuda = device.type == "cuda"
    rows: list[tuple[str, str, float]] = []
    started = time.perf_counter()

    def add(what: str, unit: str, value: float) -> None:
        rows.append((what, unit, value))
        print(f"{what:58s} {value:10.2f} {unit}", flush=True)

    print(f"device {torch.cuda.get_device_name(device) if cuda else device}; torch {torch.__version__}; "
          f"profile {'smoke (quick)' if args.quick else 'full, random weights'}", flush=True)
    model = engine.build_model("anomalyclip", profile, device)
    size = model.config.image_size
    for amp in ((False, True) if cuda else (False,)):
        label = "AMP fp16" if amp else "fp32"
        add(f"AnomalyCLIP predict, {size} px, batch 8, {label}", "img/s", predict_rate(model, 8, repeats, device, amp))
        add(f"AnomalyCLIP train step, {size} px, batch 8, {label}", "step/s", train_rate(model, 8, repeats, device, amp))
    del model
    inctrl = engine.build_model("inctrl", profile, device)
    prompts = {"object": images(inctrl, 4, device)}
    predictor = engine.method_of(inctrl).with_prompts(inctrl, prompts)
    predictor.config = inctrl.config
    add(f"InCTRL predict, {inctrl.config.image_size} px, k = 4, batch 8, fp32", "img/s",
        predict_rate(predictor, 8, repeats, device))
    del inctrl, predictor
    vand = engine.build_model("vand", profile, device)
    add(f"VAND predict, {vand.config.image_size} px, batch 8, fp32", "img/s", predict_rate(vand, 8, repeats, device))
    del vand
    winclip = engine.build_model("winclip", profile, device)
    add(f"WinCLIP predict, {winclip.config.image_size} px, batch 8, fp32", "img/s",
        predict_rate(winclip, 8, repeats, device))
    del winclip
    if cuda:
        torch.cuda.empty_cache()
    for i, seconds in enumerate(course_train_seconds(str(device)), start=1):
        add(f"course train --workers 1, tiny run {i} on {device.type}", "s", seconds)
    total = time.perf_counter() - started
    print(f"\n| check | value | unit |\n|---|---|---|")
    for what, unit, value in rows:
        print(f"| {what} | {value:.2f} | {unit} |")
    result = {"device": str(torch.cuda.get_device_name(device) if cuda else device), "torch": torch.__version__,
              "quick": args.quick, "seconds": round(total, 1),
              "rows": [{"check": w, "unit": u, "value": v} for w, u, v in rows]}
    if cuda:
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    write_json_atomic(result, args.out)
    print(f"\n{len(rows)} checks in {total:.0f} s; {args.out}")


if __name__ == "__main__":
    main()
