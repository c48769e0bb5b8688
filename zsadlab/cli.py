"""The ``zsadlab`` command line: ``zsadlab <group> <command> [options]``.

Each command group is one function in ``COMMANDS`` that adds its sub-parser and
sets ``func`` on every command; adding ``train``, ``test`` or ``predict`` means
writing one more builder and registering it. Dataset errors are printed as one
line (``error: ...``) with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .data import DatasetError, fetch_raw, prepare, registry

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


COMMANDS: dict[str, Builder] = {"data": add_data_commands}


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
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
