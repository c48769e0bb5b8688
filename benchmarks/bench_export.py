"""ONNX export speed: onnxruntime vs torch per image on this CPU, same process, same inputs.

Exports AnomalyCLIP (``zsadlab.export.export_onnx``: DPAM image path, text features as constants,
Gaussian smoothing in the graph), then times ``model.predict`` (torch, eval, no grad) and the
onnxruntime session on the same batch of images, alternating the two after one warm-up each, with
the same thread count for both. Reports seconds per image and the ratio torch / onnxruntime (> 1:
onnxruntime is faster), and the largest output difference.

Run: ``python benchmarks/bench_export.py [--profile smoke|full] [--threads 2] [--repeats 5]`` -> lines on
stdout, JSON in build/bench/export_<profile>.json. ``--profile full`` needs ViT-L-14-336 weights (or
random ones through ``$ZSADLAB_WEIGHTS_DIR``, as tests/test_fullsize.py writes them) and several GB.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from zsadlab import engine
from zsadlab.export import export_onnx
from zsadlab.profiles import get_profile


def seconds_per_image(run, batch: int, repeats: int) -> list[float]:
    """Per-image wall time of each of ``repeats`` calls of ``run()`` on a batch of ``batch`` images."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) / batch)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke", choices=["smoke", "full"])
    parser.add_argument("--method", default="anomalyclip")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = engine.build_model(args.method, get_profile(args.profile, quiet=True), device="cpu")
    size = model.config.image_size
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))  # [B, 3, S, S]
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "model.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"images": images.numpy()}
    torch_out, onnx_out = model.predict(images), session.run(["scores", "maps"], feed)  # warm-up, outputs
    difference = max(float(np.abs(a.numpy() - b).max()) for a, b in zip(torch_out, onnx_out))
    timings = {"torch": [], "onnxruntime": []}
    for _ in range(args.repeats):  # alternate, so a busy moment of the machine hits both
        timings["torch"] += seconds_per_image(lambda: model.predict(images), args.batch, 1)
        timings["onnxruntime"] += seconds_per_image(lambda: session.run(["scores", "maps"], feed), args.batch, 1)
    median = {name: float(np.median(values)) for name, values in timings.items()}
    ratio = median["torch"] / median["onnxruntime"]
    print(f"{args.method} ({args.profile}, {size} px), batch {args.batch}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs, median of {args.repeats}:")
    print(f"  torch        {median['torch'] * 1e3:9.1f} ms/image")
    print(f"  onnxruntime  {median['onnxruntime'] * 1e3:9.1f} ms/image")
    print(f"  ratio torch / onnxruntime: {ratio:.2f}; largest output difference {difference:.1e}")
    out = Path(f"build/bench/export_{args.profile}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"method": args.method, "profile": args.profile, "image_size": size,
                               "batch": args.batch, "threads": args.threads, "seconds_per_image": timings,
                               "median": median, "ratio": ratio, "max_difference": difference}, indent=2) + "\n")


if __name__ == "__main__":
    main()
