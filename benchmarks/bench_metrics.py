"""Benchmark of zsadlab.metrics.aupro on a realistic test set (the MVTec AUPRO definition of
Bergmann et al., IJCV 2021).

- ``mvtec`` (exact curve) against a straightforward per-threshold implementation of the same
  definition written below: 200 thresholds like the official AnomalyCLIP code, masks labelled
  again at every threshold. Reports both times, the speed-up, the value difference (what a
  200-threshold approximation loses against the exact curve) and the peak memory.
- ``anomalyclip`` (vectorised official recipe) on 20 maps.

Data: 100 maps of 518×518 (the AnomalyCLIP image size); half the images are anomalous with
1-3 disks or blobs; maps are smooth noise plus a smoothed copy of the mask.

Run: ``python benchmarks/bench_metrics.py [--n 100] [--size 518] [--json build/bench/metrics.json]``
"""
from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
import scipy.ndimage
import skimage.measure

from zsadlab import metrics
from zsadlab.utils import write_json_atomic


def realistic_set(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``maps`` ``[n, size, size]`` float32 and ``masks`` ``[n, size, size]`` uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for mask in masks[n // 2:]:  # second half anomalous
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            radius = rng.uniform(0.02, 0.12) * size
            wobble = scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), radius / 3)
            wobble *= 0.25 * radius / wobble.std()
            mask |= np.hypot(yy - cy, xx - cx) + wobble < radius  # a disk with a ragged edge: a blob
    noise = scipy.ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 6, 6))
    signal = scipy.ndimage.gaussian_filter(masks.astype(np.float32), (0, 4, 4))
    maps = (noise / noise.std() + 2.5 * signal).astype(np.float32)
    return maps, masks


def per_threshold_aupro(maps, masks, fpr_limit=0.3, steps=200) -> float:
    """MVTec AUPRO the straightforward way: threshold, label, count, at 200 thresholds."""
    normal = masks == 0
    curve = [(0.0, 0.0)]
    low, high = maps.min(), maps.max()
    for th in np.arange(low, high, (high - low) / steps)[::-1]:  # high to low
        positive = maps > th
        overlaps = [positive[i][region.coords[:, 0], region.coords[:, 1]].mean()
                    for i, mask in enumerate(masks)
                    for region in skimage.measure.regionprops(skimage.measure.label(mask))]
        curve.append(((positive & normal).sum() / normal.sum(), np.mean(overlaps)))
    fpr, pro = np.array(curve).T
    after = np.searchsorted(fpr, fpr_limit)  # first point at or past the limit
    pro_at_limit = np.interp(fpr_limit, fpr[after - 1:after + 1], pro[after - 1:after + 1])
    return np.trapezoid(np.append(pro[:after], pro_at_limit), np.append(fpr[:after], fpr_limit)) / fpr_limit


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """``(value, seconds)`` of one call."""
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def peak_mib(fn, *args, **kwargs) -> float:
    """Peak memory allocated during one call (tracemalloc sees numpy buffers), in MiB."""
    tracemalloc.start()
    fn(*args, **kwargs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="number of maps")
    parser.add_argument("--size", type=int, default=518, help="map side in pixels")
    parser.add_argument("--n-anomalyclip", type=int, default=20, help="maps for the anomalyclip timing")
    parser.add_argument("--json", default="build/bench/metrics.json", help="where to write the results")
    args = parser.parse_args()

    maps, masks = realistic_set(args.n, args.size)
    exact, t_exact = timed(metrics.aupro, maps, masks)
    approx, t_naive = timed(per_threshold_aupro, maps, masks)
    few = slice(args.n // 2 - args.n_anomalyclip // 2, args.n // 2 + args.n_anomalyclip // 2)  # half anomalous
    official, t_official = timed(metrics.aupro, maps[few], masks[few], method="anomalyclip")
    results = {
        "maps": f"{args.n}x{args.size}x{args.size}",
        "mvtec_seconds": t_exact,
        "per_threshold_seconds": t_naive,
        "speedup": t_naive / t_exact,
        "mvtec_aupro": exact,
        "per_threshold_aupro": approx,
        "value_difference": approx - exact,
        "mvtec_peak_mib": peak_mib(metrics.aupro, maps, masks),
        "process_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
        "anomalyclip_maps": args.n_anomalyclip,
        "anomalyclip_seconds": t_official,
        "anomalyclip_aupro": official,
    }
    print(f"AUPRO on {results['maps']} maps ({int(masks.any(axis=(1, 2)).sum())} anomalous)")
    print(f"{'method':<34}{'seconds':>9}{'AUPRO':>12}")
    print(f"{'mvtec (exact)':<34}{t_exact:>9.2f}{exact:>12.6f}")
    print(f"{'per-threshold labelling, 200 th':<34}{t_naive:>9.2f}{approx:>12.6f}")
    print(f"{f'anomalyclip, {args.n_anomalyclip} maps':<34}{t_official:>9.2f}{official:>12.6f}")
    print(f"speed-up {results['speedup']:.1f}x   value difference {results['value_difference']:+.2e}   "
          f"peak memory in aupro {results['mvtec_peak_mib']:.0f} MiB "
          f"(process max RSS {results['process_max_rss_mib']:.0f} MiB)")
    print(f"wrote {write_json_atomic(results, args.json)}")


if __name__ == "__main__":
    main()
