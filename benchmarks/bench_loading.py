"""Data loading speed: images/s of decoding + resizing to 518 px + normalising, with 0, 2 and 4 workers.

What the trainer's DataLoader does per image (``AnomalyDataset`` at AnomalyCLIP's 518 px, masks
included), timed over whole passes of a prepared dataset after one warm-up pass (so the page
cache is warm). Worker start-up is included, as in training, where a loader is made per epoch.

Run: ``python benchmarks/bench_loading.py [--root data/mvtec] [--passes 2]`` -> table on stdout,
JSON in build/bench/loading.json. Without ``--root`` the synthetic_industrial smoke set is used.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from zsadlab.data import AnomalyDataset, collate, ensure_dataset


def images_per_second(dataset: AnomalyDataset, workers: int, batch_size: int, passes: int) -> float:
    """Mean images/s over ``passes`` full passes of a fresh DataLoader each."""
    started = time.perf_counter()
    for _ in range(passes):
        for _ in DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate):
            pass
    return passes * len(dataset) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="a prepared dataset (default: synthetic_industrial under build/bench)")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root) if args.root else ensure_dataset("synthetic_industrial", Path("build/bench/data"))
    dataset = AnomalyDataset(root, split="test", image_size=args.size)
    images_per_second(dataset, 0, args.batch_size, 1)  # warm the page cache
    results = {w: images_per_second(dataset, w, args.batch_size, args.passes) for w in args.workers}
    print(f"{root.name}: {len(dataset)} test images at {args.size} px, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs")
    for workers, speed in results.items():
        print(f"  {workers} workers: {speed:7.1f} images/s")
    out = Path("build/bench/loading.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"root": str(root), "images": len(dataset), "size": args.size, "cpus": os.cpu_count(),
                               "images_per_second": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
