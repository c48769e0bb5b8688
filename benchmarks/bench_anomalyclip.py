"""AnomalyCLIP speed: ``predict`` against plain open_clip ``encode_image``, side by side in one process.

Real ViT-L-14-336 architecture with random weights (nothing is downloaded), 518 px,
features 6/12/18/24, DPAM on the last 19 blocks. Reports seconds per image for
``predict`` at batch 1 and 4, the ratio to ``encode_image`` at the same input, one
training step at batch 2, and peak memory. On a GPU it reports images/s instead.

    python benchmarks/bench_anomalyclip.py [--repeats 3] [--batches 1 4] [--device cpu]
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time
from pathlib import Path

import open_clip
import torch

from zsadlab.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from zsadlab.backbone import resized_positional_embedding
from zsadlab.utils import pick_device, write_json_atomic


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after one warm-up call."""
    fn()
    runs = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - start)
    return runs


def plain_clip_at(clip, size: int):
    """A copy of ``clip`` whose positional table is resized for ``size`` px, so that open_clip's own
    ``encode_image`` runs at that size (the reference the issue compares against)."""
    plain = copy.deepcopy(clip)
    grid = size // plain.visual.patch_size[0]
    table = resized_positional_embedding(plain.visual, grid).detach()
    plain.visual.positional_embedding = torch.nn.Parameter(table, requires_grad=False)
    return plain


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="build/bench/anomalyclip.json")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-L-14-336", pretrained=None, force_quick_gelu=True).float().eval().to(device)
    model = AnomalyCLIP(clip, AnomalyCLIPConfig()).to(device)  # paper defaults: 518 px, DPAM 19 blocks
    size = model.config.image_size
    plain = plain_clip_at(clip, size)
    results = {"device": str(device), "threads": torch.get_num_threads(), "image_size": size, "rows": []}
    print(f"device {device}, {torch.get_num_threads()} threads, ViT-L-14-336 random weights, {size} px")
    print(f"{'batch':>5} {'encode_image s/img':>19} {'predict s/img':>14} {'ratio':>6}")
    for batch in args.batches:
        x = torch.randn(batch, 3, size, size, device=device)
        with torch.no_grad():
            reference = timed(lambda x=x: plain.encode_image(x), args.repeats, device)
            ours = timed(lambda x=x: model.predict(x), args.repeats, device)
        row = {"batch": batch, "encode_image_s_per_image": statistics.median(reference) / batch,
               "predict_s_per_image": statistics.median(ours) / batch, "encode_runs": reference, "predict_runs": ours}
        row["ratio"] = row["predict_s_per_image"] / row["encode_image_s_per_image"]
        results["rows"].append(row)
        print(f"{batch:>5} {row['encode_image_s_per_image']:>19.2f} {row['predict_s_per_image']:>14.2f} {row['ratio']:>6.2f}")
    x = torch.randn(2, 3, size, size, device=device)
    masks = (torch.rand(2, size, size, device=device) > 0.9).float()
    labels = torch.tensor([0, 1], device=device)
    optimizer = torch.optim.Adam(model.prompt_learner.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def step():
        optimizer.zero_grad()
        model.losses(x, masks, labels)["total"].backward()
        optimizer.step()

    train = timed(step, max(1, args.repeats - 1), device)
    results["train_step_batch2_s"] = statistics.median(train)
    results["peak_rss_gib"] = peak_rss_gib()
    if device.type == "cuda":
        results["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
        results["predict_images_per_s"] = 1 / results["rows"][-1]["predict_s_per_image"]
    print(f"training step, batch 2: {results['train_step_batch2_s']:.2f} s; peak RSS {results['peak_rss_gib']:.2f} GiB")
    write_json_atomic(results, Path(args.out))
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))


if __name__ == "__main__":
    main()
