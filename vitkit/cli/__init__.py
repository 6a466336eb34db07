"""The `vitkit` command: one sub-command per user task, each a thin shell over a library function.

Each module here adds its commands' parsers, with their arguments beside the handler that reads them."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import VitkitError
from ..runtime import tune_allocator
from . import convert, cost, data, env, evaluate, experiment, explain, export, models, predict, serve, train

COMMANDS = (models, train, convert, explain, evaluate, experiment, cost, export, data, predict, serve, env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit",
        description="Vision Transformers (Dosovitskiy et al.): train, load, inspect and deploy.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    tune_allocator()  # fixed malloc thresholds: 1.06-1.22x on CPU (vitkit/runtime.py, benchmarks/allocator.py)
    try:
        return int(args.func(args) or 0)
    except (VitkitError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        if args.debug:
            raise
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
