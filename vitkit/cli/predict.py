"""`vitkit predict`: top-k classes of image files."""

from __future__ import annotations

import argparse
import json
import sys

from .common import checkpoint_flag, compile_flag, device_flag, images_flag, precision_flag, runtime_flag


def _predict(args: argparse.Namespace) -> int:
    from ..predict import predict

    results = predict(args.checkpoint, args.images, args.top_k, device=args.device, compile=args.compile,
                      precision=args.precision, runtime=args.runtime)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    for r in results:
        if r.error:
            print(f"vitkit predict: error: {r.error}", file=sys.stderr)
        elif not args.json:
            print(f"{r.path}: " + ", ".join(f"{c} {p:.4f}" for c, p in r.top))
    return 1 if any(r.error for r in results) else 0


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of image files",
                       description="Predict classes of image files with the checkpoint's own preprocessing "
                                   "(size, channels, mean/std). Unreadable files are reported by name; the "
                                   "others are still predicted (exit status 1 if any failed).")
    checkpoint_flag(p)
    images_flag(p, "to classify")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON (one object per image)")
    device_flag(p)
    compile_flag(p)
    precision_flag(p)
    runtime_flag(p)
    p.set_defaults(func=_predict)
