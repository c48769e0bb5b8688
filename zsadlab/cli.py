"""The ``zsadlab`` command line: ``zsadlab data|train|test|predict|pull|course [options]``.

Each command is one builder function in ``COMMANDS`` that adds its sub-parser and
sets ``func``; methods come from the registry (:mod:`zsadlab.methods`), never by name.
Errors about the user's input (:class:`~zsadlab.errors.UserError`: datasets, checkpoints,
images, run folders, arguments; output folders; missing weights) are printed as one line (``error: ...``)
with exit status 2; everything else is a bug and keeps its traceback (``ZSADLAB_DEBUG=1``
shows it for user errors too). Ctrl-C during training exits with 130 and says how to resume.

Multi-GPU: ``torchrun --standalone --nproc_per_node N -m zsadlab train ...``.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import engine, pretrained
from .backbone import WeightsUnavailableError
from .data import ensure_dataset, fetch_raw, prepare, registry
from .engine.prediction import check_prompts, user_images
from .errors import InputError, UserError
from .methods import get_method, method_names
from .profiles import get_profile
from .utils import OutputError, check_writable, pick_device

Builder = Callable[[argparse._SubParsersAction], None]


def _data_list(args: argparse.Namespace) -> int:
    print(registry.table())
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        root = prepare(args.name, raw=args.raw, out=args.out, seed=args.seed, overwrite=args.force)
    for warning in caught:  # e.g. skipped images: one plain line each, no source location
        print(f"warning: {warning.message}", file=sys.stderr)
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


def _refuse_non_positive(args: argparse.Namespace, *options: str) -> None:
    """One line for a count option given as 0 or less (never silently replaced by the default)."""
    for option in options:
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is not None and value < 1:
            raise InputError(f"{option} must be at least 1, got {value}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="anomalyclip", choices=method_names(),
                   help="a registered method: anomalyclip, its presets and baselines, inctrl, ...")
    p.add_argument("--profile", default="auto", choices=["auto", "full", "smoke"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the method's official one)")


def checked_device(name: str | None) -> torch.device:
    """``--device`` as a torch device that exists on this machine, else an :class:`InputError`."""
    try:
        device = pick_device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device name; use cpu, cuda, cuda:1 or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise InputError(f"--device {name}: no {device.type} device on this machine; use --device cpu "
                         "(or leave it out for the best available)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _model(args: argparse.Namespace):
    device = checked_device(args.device)
    profile = get_profile(args.profile)
    return profile, engine.build_model(args.method, profile, device=device, seed=args.seed)


def _method_train(args: argparse.Namespace) -> int:
    _refuse_non_positive(args, "--epochs", "--batch-size", "--shots")
    spec = get_method(args.method)
    if spec.recipe is None:
        raise InputError(f"{args.method} learns nothing, so there is nothing to train; "
                         f"train one of {[n for n in method_names() if get_method(n).recipe]}")
    if args.shots is not None and not spec.few_shot:
        raise InputError(f"--shots is for few-shot methods; {args.method} takes no reference images")
    check_writable(args.out)
    profile, model = _model(args)
    root = ensure_dataset(args.dataset or profile.train_dataset, args.data_root)
    before = engine.completed_epochs(args.out)
    try:
        history = engine.fit(model, root, epochs=args.epochs, batch_size=args.batch_size, out_dir=args.out,
                             seed=args.seed, shots=args.shots, amp=args.amp, num_workers=args.workers)
    except KeyboardInterrupt:
        if engine.is_main_process():
            done = engine.completed_epochs(args.out)
            print(f"\ninterrupted: {done} epoch(s) saved in {args.out}; run the same command again to resume",
                  file=sys.stderr)
        return 130
    ran = len(history["epoch_total"]) - before
    if engine.is_main_process():
        if ran == 0:
            print(f"the run in {args.out} is already complete ({before} epochs); nothing was trained. "
                  "Pass a larger --epochs to continue it, or another --out for a new run.")
        else:
            print(f"trained {args.method} for {ran} epoch(s) (now {len(history['epoch_total'])}); last epoch loss "
                  f"{history['epoch_total'][-1]:.4f}; checkpoints in {args.out}")
    return 0


def _refuse_unused_checkpoint(args: argparse.Namespace) -> None:
    """One line for a ``--checkpoint`` given to a method that learns nothing (it would be silently unused)."""
    if args.checkpoint and get_method(args.method).load is None:
        raise InputError(f"{args.method} learns nothing, so --checkpoint {args.checkpoint} would be unused; "
                         "leave it out (or choose a method that learns)")


def _load_or_warn(model, args: argparse.Namespace) -> None:
    """Load ``--checkpoint``; without one, say that the trainable parts are at their random init."""
    spec = get_method(args.method)
    if args.checkpoint:
        engine.load_checkpoint(model, args.checkpoint)
    elif spec.learns != "nothing":
        print(f"note: no --checkpoint given: {args.method}'s trainable parts are untrained (random init)",
              file=sys.stderr)


def _refuse_fewshot_options(args: argparse.Namespace, *names: str) -> None:
    """One line for few-shot options given to a method that is not few-shot."""
    given = [name for name in names if getattr(args, name.lstrip("-").replace("-", "_")) is not None]
    if given and not get_method(args.method).few_shot:
        raise InputError(f"{', '.join(given)} is for few-shot methods; {args.method} takes no reference images")


def _method_test(args: argparse.Namespace) -> int:
    _refuse_non_positive(args, "--shots")
    _refuse_fewshot_options(args, "--shots", "--seeds")
    _refuse_unused_checkpoint(args)
    if args.out:
        check_writable(args.out)
    profile, model = _model(args)
    _load_or_warn(model, args)
    root = ensure_dataset(args.dataset or profile.test_dataset, args.data_root)
    table = engine.test(model, root, shots=args.shots or 4, seeds=args.seeds or [0], out_dir=args.out)
    print(table)
    if args.out:
        print(f"saved {table.to_csv(Path(args.out) / 'results.csv')} and {table.to_json(Path(args.out) / 'results.json')}")
    return 0


def _method_predict(args: argparse.Namespace) -> int:
    _refuse_fewshot_options(args, "--prompts")
    _refuse_unused_checkpoint(args)
    check_prompts(get_method(args.method), args.prompts)
    user_images(args.images)  # the inputs and the output folder are checked before the model is built
    check_writable(args.out)
    profile, model = _model(args)
    _load_or_warn(model, args)
    written = engine.predict_images(model, args.images, out_dir=args.out, class_name=args.class_name,
                                    prompts=args.prompts)
    skipped = f"; {len(written['skipped'])} unreadable image(s) skipped (see its status column)" \
        if written["skipped"] else ""
    print(f"scores in {written['csv']}; {len(written['overlays'])} overlays in {args.out}{skipped}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    try:
        path = pretrained.pull(args.name, from_file=args.from_file)
    except (FileNotFoundError, ValueError) as err:  # a --from file that is missing or fails verification
        raise InputError(str(err)) from None
    print(f"{args.name}: {path}")
    return 0


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """``zsadlab train``: the official recipe of the method, with checkpoints and resume."""
    train = commands.add_parser("train", help="train a method on an auxiliary dataset (torchrun: multi-GPU)")
    _add_common(train)
    train.add_argument("--dataset", help="registry name (default: the profile's training set)")
    train.add_argument("--data-root", default="data", help="where prepared datasets live")
    train.add_argument("--epochs", type=int, help="default: the method's recipe in the profile")
    train.add_argument("--batch-size", type=int,
                       help="the global batch (split over the processes under torchrun); default: the recipe's")
    train.add_argument("--shots", type=int, help="few-shot methods: normal prompts per query (InCTRL: 2)")
    train.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA (a deviation: the official is fp32)")
    train.add_argument("--workers", type=int, default=None,
                       help="DataLoader worker processes (default: 4 on CUDA, 0 on CPU)")
    train.add_argument("--out", default="runs/train", help="run folder (resumes the run it holds)")
    train.set_defaults(func=_method_train)


def add_test_command(commands: argparse._SubParsersAction) -> None:
    """``zsadlab test``: the per-class result table of a method on a dataset."""
    test = commands.add_parser("test", help="evaluate on a dataset: per-class table, CSV and JSON")
    _add_common(test)
    test.add_argument("--checkpoint", help="official-format checkpoint (AnomalyCLIP epoch_N.pth / InCTRL .pyth)")
    test.add_argument("--dataset", help="registry name (default: the profile's test set)")
    test.add_argument("--data-root", default="data")
    test.add_argument("--shots", type=int, help="few-shot methods: k normal prompts per class (default 4)")
    test.add_argument("--seeds", type=int, nargs="+", help="few-shot methods: prompt-sampling seeds (default 0)")
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
                         help="few-shot methods: normal reference images, a file or a folder (repeatable)")
    predict.add_argument("--out", default="predictions")
    predict.set_defaults(func=_method_predict)


def add_pull_command(commands: argparse._SubParsersAction) -> None:
    """``zsadlab pull NAME [--from FILE]``: an official checkpoint into ``$ZSADLAB_HOME``, verified."""
    pull = commands.add_parser("pull", help="download (or register) an official checkpoint, verified")
    pull.add_argument("name", choices=sorted(pretrained.PRETRAINED))
    pull.add_argument("--from", dest="from_file", metavar="FILE",
                      help="a file downloaded by hand (offline, or InCTRL's Google Drive file)")
    pull.set_defaults(func=_pull)


def _course(args: argparse.Namespace) -> int:
    from . import course

    return course.main(args.rest)


def add_course_command(commands: argparse._SubParsersAction) -> None:
    """``zsadlab course plan|train|pack|student|site|colab ...``: the course tools (:mod:`zsadlab.course`)."""
    course = commands.add_parser("course", add_help=False,
                                 help="plan, train and pack the series' runs for a class; student copies, site")
    course.add_argument("rest", nargs=argparse.REMAINDER)
    course.set_defaults(func=_course)


COMMANDS: dict[str, Builder] = {"data": add_data_commands, "train": add_train_command, "test": add_test_command,
                               "predict": add_predict_command, "pull": add_pull_command,
                               "course": add_course_command}


def parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-parser per entry of ``COMMANDS``."""
    root = argparse.ArgumentParser(prog="zsadlab", description=__doc__.splitlines()[0])
    groups = root.add_subparsers(dest="group", required=True)
    for build in COMMANDS.values():
        build(groups)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zsadlab`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["course"]:  # its own parser (options included: `zsadlab course --help`)
        from . import course

        return course.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `zsadlab data list | head`
        sys.stderr.close()
        return 0
    except (UserError, OutputError, WeightsUnavailableError) as err:
        if os.environ.get("ZSADLAB_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
