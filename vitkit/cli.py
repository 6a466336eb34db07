"""The `vitkit` command: one sub-command per user task, each a thin shell over a library function."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import VitkitError

Command = Callable[[argparse.Namespace], int | None]


def _models(args: argparse.Namespace) -> None:
    from .models import count_params, list_models, model_config

    names = list_models(args.filter)
    if not names:
        raise VitkitError(f"no registered model matches '{args.filter}'")
    rows = []
    for name in names:
        cfg = model_config(name)
        h, w = cfg.img_size
        rows.append((name, f"{count_params(cfg):,}", f"{cfg.in_chans}x{h}x{w}"))
    widths = [max(len(r[i]) for r in rows + [("model", "params", "input")]) for i in range(3)]
    print(f"{'model':<{widths[0]}}  {'params':>{widths[1]}}  input")
    for name, params, size in rows:
        print(f"{name:<{widths[0]}}  {params:>{widths[1]}}  {size}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit",
        description="Vision Transformers (Dosovitskiy et al.): train, load, inspect and deploy.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered models with parameter counts and input sizes",
                       description="List registered models: name, parameter count (1000 classes unless the "
                                   "preset says otherwise) and input size (channels x height x width).")
    p.add_argument("--filter", default="*", metavar="PATTERN",
                   help="shell-style pattern or substring, e.g. 'patch16' or 'vit_base_*' (default: all)")
    p.set_defaults(func=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
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
