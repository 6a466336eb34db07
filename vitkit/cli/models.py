"""`vitkit models`: the registered models with parameter counts and input sizes."""

from __future__ import annotations

import argparse

from ..errors import VitkitError


def _models(args: argparse.Namespace) -> None:
    from ..models import count_params, list_models, model_config

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


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models with parameter counts and input sizes",
                       description="List registered models: name, parameter count (1000 classes unless the "
                                   "preset says otherwise) and input size (channels x height x width).")
    p.add_argument("--filter", default="*", metavar="PATTERN",
                   help="shell-style pattern or substring, e.g. 'patch16' or 'vit_base_*' (default: all)")
    p.set_defaults(func=_models)
