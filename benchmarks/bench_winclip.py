"""WinCLIP speed: all windows of a batch in one transformer call vs one call per window, CPU.

Setup: fp32, ``eval()`` + ``no_grad``, class "bottle" (text encoded and cached before timing),
zero-shot ``predict`` on a batch of random 240-px images, median of ``--repeats`` runs.

* **batched** - the library's :func:`zsadlab.winclip.window_embeddings`: per scale, the
  ``B*n`` window sequences go through the transformer together (anomalib's layout, batch-first);
* **per-window loop** - the same windows, each run alone through the transformer (what a
  straightforward port does); every other part of ``predict`` is unchanged.

Backbones: ``vit`` = the real ViT-B-16-plus-240 architecture with RANDOM weights
(``open_clip.create_model("ViT-B-16-plus-240", pretrained=None)``; speed does not depend on the
weights), ``tiny`` = the smoke profile's tiny CLIP of the fixtures.

Run: ``OMP_NUM_THREADS=2 python benchmarks/bench_winclip.py [--models tiny vit] [--batch 4]``
-> table on stdout, JSON in build/bench/winclip.json.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import open_clip
import torch

import zsadlab.winclip as winclip
from zsadlab.backbone import pooled_image_embedding, tiny_clip
from zsadlab.utils import write_json_atomic


def looped_window_embeddings(visual, tokens, masks):
    """``[B, n, D]``: the baseline, one transformer call per window of every image."""
    rows = [pooled_image_embedding(visual, winclip.transformer_stream(visual, sequence[None]))
            for sequence in winclip.window_sequences(tokens, masks)]  # B*n x [1, D]
    return torch.cat(rows).unflatten(0, (tokens.shape[0], masks.shape[1]))  # [B, n, D]


def backbone(name: str):
    if name == "tiny":
        return tiny_clip("vit16-240")
    return open_clip.create_model("ViT-B-16-plus-240", pretrained=None).float().eval()


def timed_predictions(model, images, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``repeats`` zero-shot predictions of ``images``, and the last scores ``[B]``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores, _ = model.predict(images, "bottle")
        times.append(time.perf_counter() - start)
    return statistics.median(times), scores


def measure(name: str, batch: int, repeats: int) -> dict:
    model = winclip.build(backbone(name))
    images = torch.randn(batch, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    model.text_embeddings("bottle")  # the text cache, outside the timing
    batched, scores = timed_predictions(model, images, repeats)
    original = winclip.window_embeddings
    winclip.window_embeddings = looped_window_embeddings
    try:
        looped, looped_scores = timed_predictions(model, images, repeats)
    finally:
        winclip.window_embeddings = original
    return {"backbone": name, "batch": batch, "windows_per_image": sum(m.shape[1] for m in model.masks),
            "batched_images_per_s": batch / batched, "looped_images_per_s": batch / looped,
            "speedup": looped / batched, "max_score_difference": float((looped_scores - scores).abs().max()),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "vit"], choices=["tiny", "vit"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="build/bench/winclip.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    rows = [measure(name, args.batch, args.repeats) for name in args.models]
    print(f"{'backbone':8} {'batch':>5} {'windows':>7} {'batched img/s':>14} {'loop img/s':>11} {'speed-up':>9} {'max |d score|':>13}")
    for r in rows:
        print(f"{r['backbone']:8} {r['batch']:>5} {r['windows_per_image']:>7} {r['batched_images_per_s']:>14.2f} "
              f"{r['looped_images_per_s']:>11.2f} {r['speedup']:>8.1f}x {r['max_score_difference']:>13.1e}")
    write_json_atomic(rows, Path(args.out))


if __name__ == "__main__":
    main()
