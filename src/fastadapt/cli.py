"""The ``fastadapt`` command line: a thin layer over the Python API.

    fastadapt --version
    fastadapt data omniglot --verify [--data-dir DIR] [--cache-dir DIR]
    fastadapt data omniglot --download [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import fastadapt

DATASETS = ("omniglot",)


def _data_command(args: argparse.Namespace) -> int:
    from fastadapt.data import omniglot

    if args.download:
        path = omniglot.download_omniglot(data_dir=args.data_dir)
        print(f"omniglot archives verified in {path}")
    if args.verify or not args.download:
        print(omniglot.verify_report(data_dir=args.data_dir, cache_dir=args.cache_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastadapt", description="Meta-learning on PyTorch: train, evaluate and inspect few-shot learners."
    )
    parser.add_argument("--version", action="version", version=f"fastadapt {fastadapt.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = commands.add_parser("data", help="find, verify or download a dataset")
    data.add_argument("dataset", choices=DATASETS, help="dataset name")
    data.add_argument("--verify", action="store_true", help="report what is found: counts, hashes, cache state")
    data.add_argument("--download", action="store_true", help="download the official archives and verify them")
    data.add_argument("--data-dir", default=None, help="data directory (default: $FASTADAPT_DATA or ~/.cache/fastadapt/data)")
    data.add_argument("--cache-dir", default=None, help="decoded-cache directory (default: $FASTADAPT_CACHE or ~/.cache/fastadapt/cache)")
    data.set_defaults(handler=_data_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastadapt`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as error:
        print(f"fastadapt: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
