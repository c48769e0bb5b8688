"""MuSc mutual scoring: zsadlab's chunked blocks vs the official algorithm's cost model, time and peak memory.

Setup: random L2-normalised features of the paper's size (ViT-L-14-336 at 518 px: 37 x 37 = 1369
patches, 1024 channels), fp32, one (r, layer) MSM call; the full method makes
``len(r_list) * len(feature_layers) = 12`` such calls per subset, with the same cost each.

* **official cost model** - rebuilt from torch primitives (no official code here): for every
  image, all its patches against all patches of every other image in one ``torch.cdist``
  (``[P, (N-1)*P]``, after concatenating the other images), the minimum per image, then the
  interval mean - what the official ``compute_scores_fast`` does. Its peak grows with N.
* **zsadlab** - :func:`zsadlab.musc.mutual_scoring`: ``chunk_size`` images against ``chunk_size``
  images per block; its largest intermediate is one ``[chunk*P, chunk*P]`` block whatever N is.

Both run in one process on the same features at every N (default 10 and 20); the time is the
median of ``--repeats``; the peak is the largest increase over the starting memory while it runs
(CPU: resident set size sampled every millisecond, with glibc's mmap threshold fixed at 64 KiB so
that freed blocks go back to the system at once - the script re-executes itself with
``MALLOC_MMAP_THRESHOLD_`` set; CUDA: ``max_memory_allocated``). Each function runs once untimed first. The time is
extrapolated to ``--extrapolate`` images as ``t(N) * M(M-1) / (N(N-1))`` from the largest N measured,
and the official peak linearly in N from the two largest.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_musc.py [--sizes 10 20] [--device cpu]``
-> table on stdout, JSON in build/bench/musc.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from zsadlab.musc import CHUNK_SIZE, interval_bounds, mutual_scoring
from zsadlab.utils import write_json_atomic

PATCHES, CHANNELS, MSM_CALLS = 37 * 37, 1024, 12


def official_cost_model(z: torch.Tensor, topmin_max: float = 0.3) -> torch.Tensor:
    """``[N, P, C]`` -> ``[N, P]``: one cdist per image against all patches of all other images."""
    n, p, c = z.shape
    k_min, k_max = interval_bounds(n - 1, 0.0, topmin_max)
    rows = []
    for i in range(n):
        others = torch.cat((z[:i], z[i + 1:])).reshape(-1, c)  # [(N-1)*P, C]
        nearest = torch.cdist(z[i:i + 1], others).reshape(p, n - 1, p).min(-1).values  # [P, N-1]
        rows.append(nearest.sort(-1).values[:, k_min:k_max].mean(-1).double())
    return torch.stack(rows)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakMemory:
    """Largest increase of memory in use over its value at entry (CPU: sampled RSS; CUDA: allocator)."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_bytes() - self.start)
            time.sleep(0.001)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = resident_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop.set()
            self._thread.join()


def measured(function, z, repeats: int) -> tuple[float, int, torch.Tensor]:
    """Median seconds, peak bytes, result of ``function(z)`` (after one untimed run)."""
    function(z)
    times, peaks = [], []
    for _ in range(repeats):
        with PeakMemory(z.device) as memory:
            start = time.perf_counter()
            result = function(z)
            if z.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peaks.append(memory.peak)
    return statistics.median(times), max(peaks), result


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # RSS then follows the live large blocks
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--extrapolate", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="build/bench/musc.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    with torch.no_grad():
        for n in args.sizes:
            z = torch.randn(n, PATCHES, CHANNELS, generator=torch.Generator().manual_seed(n)).to(device)
            z = z / z.norm(dim=-1, keepdim=True)
            t_official, m_official, s_official = measured(official_cost_model, z, args.repeats)
            t_ours, m_ours, s_ours = measured(lambda f: mutual_scoring(f, chunk_size=args.chunk_size), z, args.repeats)
            rows.append(dict(n=n, official_s=t_official, zsadlab_s=t_ours, official_peak_mb=m_official / 2**20,
                             zsadlab_peak_mb=m_ours / 2**20, speedup=t_official / t_ours,
                             max_abs_diff=float((s_official - s_ours).abs().max())))
            print(f"N={n:4d}  official {t_official:8.2f} s {m_official / 2**20:8.0f} MB   zsadlab {t_ours:8.2f} s "
                  f"{m_ours / 2**20:8.0f} MB   speed ratio {t_official / t_ours:.2f}   "
                  f"max|diff| {rows[-1]['max_abs_diff']:.1e}", flush=True)
    last, m = rows[-1], args.extrapolate
    scale = m * (m - 1) / (last["n"] * (last["n"] - 1))
    slope = ((rows[-1]["official_peak_mb"] - rows[-2]["official_peak_mb"]) / (rows[-1]["n"] - rows[-2]["n"])
             if len(rows) > 1 else rows[-1]["official_peak_mb"] / rows[-1]["n"])
    extrapolated = dict(n=m, official_s=last["official_s"] * scale, zsadlab_s=last["zsadlab_s"] * scale,
                        official_peak_mb=last["official_peak_mb"] + slope * (m - last["n"]),
                        zsadlab_peak_mb=max(r["zsadlab_peak_mb"] for r in rows),
                        msm_calls_per_class=MSM_CALLS)
    print(f"N={m:4d}  (extrapolated, one MSM call) official {extrapolated['official_s']:8.0f} s "
          f"{extrapolated['official_peak_mb']:8.0f} MB   zsadlab {extrapolated['zsadlab_s']:8.0f} s "
          f"{extrapolated['zsadlab_peak_mb']:8.0f} MB; x{MSM_CALLS} MSM calls for r 1/3/5 x 4 layers: "
          f"official {extrapolated['official_s'] * MSM_CALLS / 3600:.1f} h, "
          f"zsadlab {extrapolated['zsadlab_s'] * MSM_CALLS / 3600:.1f} h")
    write_json_atomic(dict(device=str(device), threads=torch.get_num_threads(), chunk_size=args.chunk_size,
                           measured=rows, extrapolated=extrapolated), Path(args.out))


if __name__ == "__main__":
    main()
