"""Memory and time of ``engine.evaluate`` on a VisA-shaped set of synthetic predictions.

12 classes with VisA's test-split sizes (2162 images in all), 518 x 518 maps, about half the
images anomalous with one to three elliptic defects each. The model is a stub whose ``predict``
returns precomputed-style maps (a seeded function of the image index: smooth noise plus a blurred
copy of the defects), and the dataset a stand-in whose items carry the index and the mask, so the
run goes through ``engine.evaluate`` itself: ``class_predictions`` -> ``predict_dataset`` ->
``class_metrics`` with every table metric (image AUROC/AP, pixel AUROC/AP, both AUPROs).
Prints the per-class table, the seconds and the peak RSS (``resource.getrusage``).

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluation.py [--size 518] [--out build/bench/evaluation.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch

from zsadlab import engine
from zsadlab.utils import write_json_atomic

VISA_TEST_SIZES = {  # images per class in VisA's test split (the 1cls split): 2162 in all
    "candle": 200, "capsules": 160, "cashew": 150, "chewinggum": 150, "fryum": 150, "macaroni1": 200,
    "macaroni2": 200, "pcb1": 200, "pcb2": 200, "pcb3": 201, "pcb4": 201, "pipe_fryum": 150,
}


def synthetic_mask(index: int, size: int) -> np.ndarray:
    """The mask [S, S] uint8 of image ``index``: every other image anomalous, 1-3 ellipses."""
    mask = np.zeros((size, size), np.uint8)
    if index % 2 == 0:
        return mask
    rng = np.random.default_rng(index)
    yy, xx = np.ogrid[:size, :size]
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        ry, rx = rng.uniform(0.01, 0.08, 2) * size
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    return mask


def synthetic_map(index: int, size: int) -> np.ndarray:
    """The anomaly map [S, S] float32 of image ``index``: smooth noise plus blurred defects."""
    rng = np.random.default_rng(10_000 + index)
    noise = scipy.ndimage.gaussian_filter(rng.standard_normal((size, size), np.float32), sigma=8) * 8
    signal = scipy.ndimage.gaussian_filter(synthetic_mask(index, size).astype(np.float32), sigma=6)
    return (noise + rng.uniform(0.5, 2.0) * signal).astype(np.float32)


class SyntheticPredictions(torch.utils.data.Dataset):
    """A stand-in for ``AnomalyDataset``: items carry their index (as a 1-pixel image) and mask."""

    def __init__(self, sizes: dict[str, int], size: int, start: int = 0):
        self.sizes, self.size, self.start = sizes, size, start

    @property
    def classes(self) -> list[str]:
        return sorted(self.sizes)

    def subset(self, class_name: str) -> "SyntheticPredictions":
        start = self.start + sum(n for c, n in self.sizes.items() if c < class_name)
        return SyntheticPredictions({class_name: self.sizes[class_name]}, self.size, start)

    def __len__(self) -> int:
        return sum(self.sizes.values())

    def class_of(self, i: int) -> str:
        """The class of item ``i`` (classes follow each other in sorted order)."""
        ends = np.cumsum([self.sizes[c] for c in self.classes])
        return self.classes[int(np.searchsorted(ends, i, side="right"))]

    def __getitem__(self, i: int) -> dict:
        index = self.start + i
        mask = synthetic_mask(index, self.size)
        return {"image": torch.full((3, 1, 1), float(index)), "mask": torch.from_numpy(mask).float(),
                "label": int(mask.any()), "class_name": self.class_of(i), "defect": "", "path": str(index)}


class StubModel(torch.nn.Module):
    """``predict`` returns the synthetic map of each index and its maximum as the image score."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def predict(self, images, class_names):
        maps = torch.stack([torch.from_numpy(synthetic_map(int(i), self.size)) for i in images[:, 0, 0, 0]])
        return maps.amax(dim=(1, 2)), maps  # [B], [B, S, S]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--out", default="build/bench/evaluation.json")
    args = parser.parse_args()
    dataset = SyntheticPredictions(VISA_TEST_SIZES, args.size)
    print(f"{len(dataset)} synthetic maps in {len(dataset.classes)} classes at {args.size}x{args.size}, "
          f"{torch.get_num_threads()} threads; before: peak RSS {peak_rss_gib():.2f} GiB")
    start = time.perf_counter()
    table = engine.evaluate(StubModel(args.size), dataset, batch_size=8, device="cpu")
    seconds = time.perf_counter() - start
    print(table)
    results = {"images": len(dataset), "classes": len(dataset.classes), "size": args.size,
               "threads": torch.get_num_threads(), "seconds": seconds, "peak_rss_gib": peak_rss_gib(),
               "mean": table.mean}
    print(f"engine.evaluate: {seconds:.0f} s, peak RSS {results['peak_rss_gib']:.2f} GiB")
    write_json_atomic(results, Path(args.out))
    print(json.dumps({k: v for k, v in results.items() if k != "mean"}))


if __name__ == "__main__":
    main()
