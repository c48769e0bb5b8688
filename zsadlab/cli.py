"""The ``zsadlab`` command line: ``zsadlab data|train|test|predict [options]``.

Each command is one builder function in ``COMMANDS`` that adds its sub-parser and
sets ``func``. Errors about the user's input (datasets, weights, checkpoints, images)
are printed as one line (``error: ...``) with exit status 2, never as a traceback;
set ``ZSADLAB_DEBUG=1`` to see the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import engine
from .backbone import WeightsUnavailableError
from .data import DatasetError, ensure_dataset, fetch_raw, prepare, registry
from .profiles import get_profile

Builder = Callable[[argparse._SubParsersAction], None]


def _data_list(args: argparse.Namespace) -> int:
    print(registry.table())
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    root = prepare(args.name, raw=args.raw, out=args.out, seed=args.seed, overwrite=args.force)
    print(f"prepared {args.name} in {root}")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    root = prepare(args.name, out=args.out, seed=args.seed, overwrite=args.force)
    print(f"generated {args.name} (seed {args.seed}) in {root}")
    return 0


def _data_download(args: argparse.Namespace) -> int:
    raw = fetch_raw(args.name, args.dir)
    print(f"raw {args.name} in {raw}; next: zsadlab data prepare {args.name} --raw {raw} --out data/{args.name}")
    return 0


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    """``zsadlab data list|prepare|synth|download``."""
    group = commands.add_parser("data", help="list, download, convert or generate datasets")
    sub = group.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="print the dataset registry").set_defaults(func=_data_list)

    prepare = sub.add_parser("prepare", help="convert a raw download into the common layout")
    prepare.add_argument("name")
    prepare.add_argument("--raw", help="the raw dataset folder (see `zsadlab data list`)")
    prepare.add_argument("--out", help="the prepared root to create (default data/NAME)")
    prepare.add_argument("--seed", type=int, default=0, help="seed, for synthetic sets")
    prepare.add_argument("--force", action="store_true", help="replace an existing --out folder")
    prepare.set_defaults(func=_data_prepare)

    synth = sub.add_parser("synth", help="generate a synthetic smoke dataset")
    synth.add_argument("name", choices=[n for n in registry.names() if registry.entry(n).synthetic])
    synth.add_argument("--out", help="the root to create (default data/NAME)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--force", action="store_true", help="replace an existing --out folder")
    synth.set_defaults(func=_data_synth)

    download = sub.add_parser("download", help="download and extract a raw archive (where a direct URL exists)")
    download.add_argument("name")
    download.add_argument("--dir", default="data/raw", help="where archives and raw folders go")
    download.set_defaults(func=_data_download)


# --- methods: train / test / predict -------------------------------------------------------


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="anomalyclip", choices=sorted(engine.BUILDERS),
                   help="anomalyclip, its baselines (clip, clip_ac, coop) or inctrl")
    p.add_argument("--profile", default="auto", choices=["auto", "full", "smoke"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the official one)")


def _model(args: argparse.Namespace):
    profile = get_profile(args.profile)
    return profile, engine.build_model(args.method, profile, device=args.device)


def _method_train(args: argparse.Namespace) -> int:
    profile, model = _model(args)
    root = ensure_dataset(args.dataset or profile.train_dataset, args.data_root)
    few_shot = args.method == "inctrl"  # its defaults live in its config, set from the profile
    history = engine.fit(model, root, epochs=args.epochs or (None if few_shot else profile.epochs),
                         batch_size=args.batch_size or (None if few_shot else profile.batch_size),
                         out_dir=args.out, seed=args.seed, shots=args.shots)
    print(f"trained {args.method} for {len(history['epoch_total'])} epochs; last epoch loss "
          f"{history['epoch_total'][-1]:.4f}; checkpoints in {args.out}")
    return 0


def _load_or_warn(model, args: argparse.Namespace) -> None:
    """Load ``--checkpoint``; without one, say that the trainable parts are at their random init."""
    if args.checkpoint:
        engine.load_checkpoint(model, args.checkpoint)
    elif any(p.requires_grad for p in model.parameters()):
        print(f"note: no --checkpoint given: {args.method}'s trainable parts are untrained (random init)",
              file=sys.stderr)


def _method_test(args: argparse.Namespace) -> int:
    profile, model = _model(args)
    _load_or_warn(model, args)
    root = ensure_dataset(args.dataset or profile.test_dataset, args.data_root)
    table = engine.test(model, root, shots=args.shots, seeds=args.seeds, out_dir=args.out)
    print(table)
    if args.out:
        print(f"saved {table.to_csv(Path(args.out) / 'results.csv')} and {table.to_json(Path(args.out) / 'results.json')}")
    return 0


def _method_predict(args: argparse.Namespace) -> int:
    profile, model = _model(args)
    _load_or_warn(model, args)
    written = engine.predict_images(model, args.images, out_dir=args.out, class_name=args.class_name,
                                    prompts=args.prompts)
    print(f"scores in {written['csv']}; {len(written['overlays'])} overlays in {args.out}")
    return 0


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """``zsadlab train``: the official recipe of the method, with checkpoints and resume."""
    train = commands.add_parser("train", help="train a method on an auxiliary dataset")
    _add_common(train)
    train.add_argument("--dataset", help="registry name (default: the profile's training set)")
    train.add_argument("--data-root", default="data", help="where prepared datasets live")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--shots", type=int, help="InCTRL: normal prompts per query (default 2, official)")
    train.add_argument("--out", default="runs/train", help="checkpoint folder (resumes if it has one)")
    train.set_defaults(func=_method_train)


def add_test_command(commands: argparse._SubParsersAction) -> None:
    """``zsadlab test``: the per-class result table of a method on a dataset."""
    test = commands.add_parser("test", help="evaluate on a dataset: per-class table, CSV and JSON")
    _add_common(test)
    test.add_argument("--checkpoint", help="official-format checkpoint (AnomalyCLIP epoch_N.pth / InCTRL .pt)")
    test.add_argument("--dataset", help="registry name (default: the profile's test set)")
    test.add_argument("--data-root", default="data")
    test.add_argument("--shots", type=int, default=4, help="InCTRL: k normal prompts per class")
    test.add_argument("--seeds", type=int, nargs="+", default=[0], help="InCTRL: prompt-sampling seeds")
    test.add_argument("--out", default=None, help="folder for results.csv / results.json")
    test.set_defaults(func=_method_test)


def add_predict_command(commands: argparse._SubParsersAction) -> None:
    """``zsadlab predict``: scores and overlays for the user's own images."""
    predict = commands.add_parser("predict", help="score your own images: CSV of scores + overlay PNGs")
    _add_common(predict)
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--checkpoint")
    predict.add_argument("--class-name", default="object", help="what the images show (object-aware prompts)")
    predict.add_argument("--prompts", action="append", metavar="PATH",
                         help="InCTRL: normal reference images, a file or a folder (repeatable)")
    predict.add_argument("--out", default="predictions")
    predict.set_defaults(func=_method_predict)


COMMANDS: dict[str, Builder] = {"data": add_data_commands, "train": add_train_command, "test": add_test_command,
                               "predict": add_predict_command}


def parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-parser per entry of ``COMMANDS``."""
    root = argparse.ArgumentParser(prog="zsadlab", description=__doc__.splitlines()[0])
    groups = root.add_subparsers(dest="group", required=True)
    for build in COMMANDS.values():
        build(groups)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zsadlab`` console script; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `zsadlab data list | head`
        sys.stderr.close()
        return 0
    except (DatasetError, WeightsUnavailableError, ValueError, KeyError, FileNotFoundError) as err:
        if os.environ.get("ZSADLAB_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
