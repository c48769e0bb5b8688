"""InCTRL forward speed on the real ViT-B-16-plus-240 architecture (random weights), CPU.

Setup of fixtures/inctrl/FIXTURES.md §8: fp32, ``eval()`` + ``no_grad``, 2 threads,
4 query images, k = 4 shared prompts, class "bottle".

* **cold**: the first call for a class - the text prior (242 prompts) is encoded;
* **warm**: later calls - the text prior comes from the per-model cache.

Time is split into backbone (image tower), residuals (patch + image-level, adapter
included), heads (``diff_head``, ``diff_head_ref``), text (the 242-prompt pass) and
the rest. The "official" cost is an *estimate from measured components*, not a run
of the official code: one full 77-token pass over the 242 prompts per query, the
k prompt images re-encoded per query, and the queries - the three costs the
official forward pays (FIXTURES §8 measured the real thing at ~80 s here).

Run: ``python benchmarks/bench_inctrl.py`` -> table on stdout, JSON in build/bench/inctrl.json.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

import zsadlab.inctrl as inctrl
from zsadlab.backbone import tokenize
from zsadlab.inctrl import InCTRL, InCTRLConfig
from zsadlab.prompts import inctrl_prompt_texts
from zsadlab.utils import write_json_atomic

OFFICIAL_MEASURED_SECONDS = 80.0  # FIXTURES §8, median of 3 runs of the reference on this machine
STAGES = ("backbone", "residuals", "heads", "text")


class StageClock:
    """Accumulates wall time per stage by wrapping the functions that implement each stage."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list = []

    def wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def reset(self) -> None:
        self.seconds.clear()

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def instrumented(model: InCTRL) -> StageClock:
    clock = StageClock()
    clock.wrap(model, "image_features", "backbone")  # prompt_features calls it too
    clock.wrap(inctrl, "patch_residual_maps", "residuals")
    clock.wrap(inctrl, "image_residual", "residuals")
    clock.wrap(model.diff_head, "forward", "heads")
    clock.wrap(model.diff_head_ref, "forward", "heads")
    clock.wrap(inctrl, "class_text_features", "text")
    return clock


def timed_call(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


@torch.no_grad()
def official_components(model: InCTRL, queries, prompts) -> tuple[dict[str, float], torch.Tensor]:
    """Seconds of the pieces the official forward repeats, and the ``[242, D]`` full-pass text features."""
    normal, anomaly = inctrl_prompt_texts("bottle")
    full_text, text_s = timed_call(model.clip.encode_text, tokenize(normal + anomaly))  # all 77 positions
    _, queries_s = timed_call(model.image_features, queries)
    _, prompts_s = timed_call(model.image_features, prompts)
    return {"text_pass_77_tokens": text_s, "queries": queries_s, "prompt_images": prompts_s}, full_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--out", default="build/bench/inctrl.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-plus-240", pretrained=None).float().eval()
    model = InCTRL(clip, InCTRLConfig()).eval()
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(args.queries, 3, 240, 240, generator=gen)
    prompts = torch.randn(args.shots, 3, 240, 240, generator=gen)  # shared test-time prompts
    n = args.queries

    clock = instrumented(model)
    with torch.no_grad():
        cold_out, cold_s = timed_call(model, queries, prompts, "bottle")
        cold_split = dict(clock.seconds)
        warm = []
        for _ in range(args.warm_runs):
            clock.reset()
            warm_out, seconds = timed_call(model, queries, prompts, "bottle")
            warm.append((seconds, dict(clock.seconds)))
    clock.restore()
    warm_s, warm_split = sorted(warm, key=lambda item: item[0])[len(warm) // 2]  # the median run
    assert torch.equal(cold_out.final_score, warm_out.final_score), "cache changed the outputs"

    components, full_text = official_components(model, queries, prompts)
    estimate = components["text_pass_77_tokens"] * n + components["prompt_images"] * n + components["queries"]
    exact_prior = torch.stack([F.normalize(F.normalize(part, dim=-1).mean(0), dim=-1)
                               for part in full_text.split([154, 88])])  # [2, D] via the 77-token pass
    prior_diff = (exact_prior - model.text_features("bottle")).abs().max().item()

    def split_row(split: dict, total: float) -> dict:
        row = {stage: split.get(stage, 0.0) for stage in STAGES}
        row["other"] = total - sum(row.values())
        return row

    result = {
        "setup": {"model": "ViT-B-16-plus-240 (random weights)", "dtype": "fp32", "threads": args.threads,
                  "queries": n, "shots": args.shots, "class": "bottle", "torch": torch.__version__},
        "cold": {"seconds": cold_s, "seconds_per_query": cold_s / n, "split": split_row(cold_split, cold_s)},
        "warm": {"seconds": warm_s, "seconds_per_query": warm_s / n, "split": split_row(warm_split, warm_s),
                 "all_runs": [s for s, _ in warm]},
        "official_estimate": {"seconds": estimate, "seconds_per_query": estimate / n, "components": components,
                              "formula": "text_pass_77_tokens*queries + prompt_images*queries + queries",
                              "measured_reference_fixtures_s8": OFFICIAL_MEASURED_SECONDS},
        "speedup_cold_vs_estimate": estimate / cold_s,
        "speedup_cold_vs_measured_reference": OFFICIAL_MEASURED_SECONDS / cold_s,
        "speedup_warm_vs_estimate": estimate / warm_s,
        "text_prior_max_abs_diff_truncated_vs_77_tokens": prior_diff,
    }
    write_json_atomic(result, Path(args.out))

    print(f"InCTRL forward, {result['setup']['model']}, fp32 CPU, {args.threads} threads, "
          f"{n} queries, k={args.shots}")
    print(f"{'':<22}{'total s':>9}{'s/query':>9}" + "".join(f"{s:>11}" for s in STAGES + ("other",)))
    for name in ("cold", "warm"):
        row = result[name]
        print(f"{name:<22}{row['seconds']:>9.2f}{row['seconds_per_query']:>9.2f}"
              + "".join(f"{row['split'][s]:>11.2f}" for s in STAGES + ("other",)))
    print(f"{'official (estimate)':<22}{estimate:>9.2f}{estimate / n:>9.2f}"
          f"   = 77-token text pass {components['text_pass_77_tokens']:.2f} s x {n}"
          f" + {args.shots} prompt images {components['prompt_images']:.2f} s x {n}"
          f" + queries {components['queries']:.2f} s")
    print(f"speed-up cold: {result['speedup_cold_vs_estimate']:.1f}x vs estimate, "
          f"{result['speedup_cold_vs_measured_reference']:.1f}x vs the measured reference (80 s); "
          f"warm: {result['speedup_warm_vs_estimate']:.1f}x vs estimate")
    print(f"text prior, EOT-truncated vs 77-token pass: max |diff| = {prior_diff:.2e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
