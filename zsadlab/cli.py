"""The ``zsadlab`` command line: ``zsadlab data|train|test|predict|calibrate|export|pull|course [options]``.

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
import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from . import calibration, engine, pretrained
from .backbone import WeightsUnavailableError
from .data import ensure_dataset, fetch_raw, prepare, registry
from .engine.prediction import check_outputs, check_prompts, check_set_size, user_images
from .errors import InputError, UserError
from .export import export_onnx, is_export, method_refusal
from .methods import get_method, method_names
from .profiles import PROFILES, get_profile
from .utils import DEVICE_ENV, OutputError, check_writable, pick_device

Builder = Callable[[argparse._SubParsersAction], None]


def _data_list(args: argparse.Namespace) -> int:
    print(registry.table())
    return 0


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """The package's warnings (skipped images, a class with too few normals) as one plain line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        finally:
            for warning in caught:
                print(f"warning: {warning.message}", file=sys.stderr)


def _data_prepare(args: argparse.Namespace) -> int:
    with _plain_warnings():
        try:
            root = prepare(args.name, raw=args.raw, out=args.out, seed=args.seed, overwrite=args.force)
        except KeyboardInterrupt:
            print(f"\ninterrupted: nothing was written to {args.out or 'data/' + args.name}; run the same command "
                  "again to prepare it", file=sys.stderr)
            return 130
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
    p.add_argument("--profile", default="auto", choices=["auto", *PROFILES])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the method's official one)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA fp16 autocast on (--amp) or off (--no-amp); default: as the method's official code "
                        "(VAND fp16 autocast, the others fp32); CPU runs fp32")


def checked_device(name: str | None) -> torch.device:
    """``--device`` as a torch device that exists on this machine, else an :class:`InputError`."""
    source = "--device" if name else f"${DEVICE_ENV}"  # pick_device falls back to the environment variable
    name = name or os.environ.get(DEVICE_ENV)
    try:
        device = pick_device(name)
    except RuntimeError:
        raise InputError(f"{source} {name!r} is not a device name; use cpu, cuda, cuda:1 or mps"
                         + (f" (or unset {DEVICE_ENV})" if source != "--device" else "")) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise InputError(f"{source} {name}: no {device.type} device on this machine; use --device cpu "
                         "(or leave it out for the best available)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"{source} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
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
    with engine.run_folder(Path(args.out), engine.is_main_process()):  # one writer; before any compute
        profile, model = _model(args)
        root = ensure_dataset(args.dataset or profile.train_dataset, args.data_root)
        before = engine.completed_epochs(args.out)
        try:
            with _plain_warnings():
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
    with _plain_warnings():
        table = engine.test(model, root, shots=args.shots or 4, seeds=args.seeds or [0], out_dir=args.out, amp=args.amp)
    print(table)
    if args.out:
        print(f"saved {table.to_csv(Path(args.out) / 'results.csv')} and {table.to_json(Path(args.out) / 'results.json')}")
    return 0


def _method_predict(args: argparse.Namespace) -> int:
    _refuse_fewshot_options(args, "--prompts")
    _refuse_unused_checkpoint(args)
    check_prompts(get_method(args.method), args.prompts)
    images = user_images(args.images)  # the inputs and the output folder are checked before the model is built
    check_set_size(get_method(args.method), len(images), " ".join(args.images))
    check_outputs(images, args.out)
    calibrated = calibration.Calibration.load(args.calibration) if args.calibration else None
    profile, model = _model(args)
    _load_or_warn(model, args)
    written = engine.predict_images(model, args.images, out_dir=args.out, class_name=args.class_name,
                                    prompts=args.prompts, amp=args.amp, calibration=calibrated)
    skipped = f"; {len(written['skipped'])} unreadable image(s) skipped (see its status column)" \
        if written["skipped"] else ""
    print(f"scores in {written['csv']}; {len(written['overlays'])} overlays in {args.out}{skipped}")
    return 0


def _checked_out_file(path: str, what: str, ours: Callable[[Path], bool]) -> Path:
    """``--out FILE``: its folder writable, and no file there but one this command wrote (``ours``)."""
    out = Path(path)
    check_writable(out.parent.resolve())
    if out.is_dir() or (out.exists() and not ours(out)):
        raise InputError(f"--out {out} exists and is not {what} written by zsadlab; choose another file name "
                         "(only such a file is replaced)")
    return out


def _method_calibrate(args: argparse.Namespace) -> int:
    _refuse_fewshot_options(args, "--prompts")
    _refuse_unused_checkpoint(args)
    spec = get_method(args.method)
    reason = calibration.refusal(spec)
    if reason:
        raise InputError(f"cannot calibrate {spec.name}: {reason}")
    check_prompts(spec, args.prompts)
    calibration.conformal_rank(len(user_images(args.normals)), args.alpha)  # before the model is built
    out = _checked_out_file(args.out, "a calibration", calibration.Calibration.is_calibration)
    profile, model = _model(args)
    _load_or_warn(model, args)
    record = calibration.calibrate(model, args.normals, alpha=args.alpha, class_name=args.class_name,
                                   prompts=args.prompts)
    record.save(out)
    pixel = f", pixel threshold {record.pixel_threshold!r} (per-pixel false-positive rate {record.pixel_fpr:.2e} " \
        "on the calibration maps)" if record.pixel_threshold is not None else ""
    print(f"{record.n} normal images, α = {record.alpha}: image threshold {record.image_threshold!r}{pixel}; "
          f"saved {out}")
    return 0


def _method_export(args: argparse.Namespace) -> int:
    reason = method_refusal(get_method(args.method))
    if reason:
        raise InputError(f"cannot export {args.method}: {reason}")
    _refuse_unused_checkpoint(args)
    out = _checked_out_file(args.out, "an ONNX export", is_export)
    calibrated = calibration.Calibration.load(args.calibration) if args.calibration else None
    profile, model = _model(args)
    _load_or_warn(model, args)
    names = [n.strip() for n in args.class_names.split(",") if n.strip()] if args.class_names else None
    export_onnx(model, out, class_names=names, calibration=calibrated)
    print(f"exported {args.method} to {out} (input images [B, 3, {model.config.image_size}, "
          f"{model.config.image_size}]{', class_index [B]' if names else ''}; outputs scores [B], maps [B, S, S])")
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
    train.add_argument("--epochs", type=int, help="default: the method's recipe (its profile and training set)")
    train.add_argument("--batch-size", type=int,
                       help="the global batch (split over the processes under torchrun); default: the recipe's")
    train.add_argument("--shots", type=int, help="few-shot methods: normal prompts per query (InCTRL: 2)")
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
    predict.add_argument("--calibration", metavar="FILE",
                         help="a `zsadlab calibrate` file: adds the columns anomalous and threshold to scores.csv")
    predict.set_defaults(func=_method_predict)


def _alpha(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"α is a false-alarm rate between 0 and 1, got {text}")
    return value


def add_calibrate_command(commands: argparse._SubParsersAction) -> None:
    """``zsadlab calibrate``: thresholds from normal images with a guaranteed false-alarm rate."""
    cal = commands.add_parser("calibrate", help="thresholds from normal images: false alarms <= alpha (conformal)")
    _add_common(cal)
    cal.add_argument("--checkpoint")
    cal.add_argument("--prompts", action="append", metavar="PATH",
                     help="few-shot methods: normal reference images, a file or a folder (repeatable)")
    cal.add_argument("--normals", nargs="+", required=True, metavar="PATH",
                     help="held-out normal images (files or folders), not the reference images")
    cal.add_argument("--alpha", type=_alpha, default=0.01, help="false-alarm rate (>= 1/(n+1) for n images)")
    cal.add_argument("--class-name", default=None, help="the class calibrated for (default: 'object')")
    cal.add_argument("--out", required=True, metavar="FILE", help="the calibration JSON to write")
    cal.set_defaults(func=_method_calibrate)


def add_export_command(commands: argparse._SubParsersAction) -> None:
    """``zsadlab export``: a zero-shot method's image path as an ONNX graph, text precomputed."""
    export = commands.add_parser("export", help="export a zero-shot method to ONNX (text side precomputed)")
    _add_common(export)
    export.add_argument("--checkpoint")
    export.add_argument("--format", default="onnx", choices=["onnx"])
    export.add_argument("--class-names", help="class-aware methods (vand): the classes, comma separated")
    export.add_argument("--calibration", metavar="FILE", help="a `zsadlab calibrate` file: thresholds as metadata")
    export.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    export.set_defaults(func=_method_export)


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
                               "predict": add_predict_command, "calibrate": add_calibrate_command,
                               "export": add_export_command, "pull": add_pull_command, "course": add_course_command}


def parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-parser per entry of ``COMMANDS``."""
    root = argparse.ArgumentParser(prog="zsadlab", description=__doc__.splitlines()[0])
    groups = root.add_subparsers(dest="group", required=True)
    for build in COMMANDS.values():
        build(groups)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zsadlab`` console script; returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["course"]:  # its own parser (options included: `zsadlab course --help`)
        from . import course

        return course.main(words[1:])
    options = words[:words.index("--")] if "--" in words else words
    dashed = next((w for w in options if w.startswith("-") and w not in ("-", "--") and Path(w).exists()), None)
    if dashed is not None:  # argparse would read it as an unknown option
        print(f"error: {dashed} is a path that starts with '-': put -- before such paths "
              f"(zsadlab predict [options] -- {dashed})", file=sys.stderr)
        return 2
    args = parser().parse_args(words)
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
