"""How far one AnomalyCLIP smoke result moves with the run's seed (not a speed benchmark).

    OMP_NUM_THREADS=1 python benchmarks/seed_spread.py --seeds 111 112 113 --epochs 3

The official ``train.py`` calls ``setup_seed`` before it builds CLIP, so building CLIP consumes
random numbers before the prompt learner is initialised; zsadlab seeds the learner (and each
epoch's shuffle) itself. The same seed therefore gives other initial prompts and batch orders
than the official script. This measures what that can move: the tiny backbone is kept fixed
(built once, as a real backbone is), and for each seed the prompt learner is initialised and
trained under that seed on the smoke training set, then evaluated on the smoke test set. It
prints each seed's image/pixel AUROC and their mean and standard deviation (population std).
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from zsadlab.anomalyclip import AnomalyCLIP
from zsadlab.data import ensure_dataset
from zsadlab.engine import build_model, dataset_for, evaluate, fit
from zsadlab.profiles import get_profile

COLUMNS = ("image_auroc", "pixel_auroc")


def seeded_model(base, seed: int):
    """A fresh AnomalyCLIP on ``base``'s (shared, frozen) CLIP, its prompt learner initialised under ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AnomalyCLIP(base.clip, base.config).eval()
    model.method_name = base.method_name
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[111, 112, 113])
    parser.add_argument("--epochs", type=int, default=None, help="default: the smoke recipe's")
    parser.add_argument("--data-root", default=None, help="default: a temporary folder")
    args = parser.parse_args()
    profile = get_profile("smoke", quiet=True)
    data_root = args.data_root or tempfile.mkdtemp(prefix="zsadlab-seeds-")
    train_root = ensure_dataset(profile.train_dataset, data_root)
    test_root = ensure_dataset(profile.test_dataset, data_root)
    base = build_model("anomalyclip", profile, "cpu")
    rows = []
    for seed in args.seeds:
        model = seeded_model(base, seed)
        fit(model, train_root, epochs=args.epochs, seed=seed, progress=False)
        mean = evaluate(model, dataset_for(model, test_root), progress=False).mean
        rows.append([100 * mean[c] if mean[c] <= 1 else mean[c] for c in COLUMNS])
        print(f"seed {seed}: " + ", ".join(f"{c} {v:.1f}" for c, v in zip(COLUMNS, rows[-1])), flush=True)
    values = np.array(rows)  # [seeds, columns]
    for column, series in zip(COLUMNS, values.T):
        print(f"{column}: mean {series.mean():.1f}, std {series.std():.1f} over {len(series)} seeds")


if __name__ == "__main__":
    main()
