"""`vitkit cost`: how a ViT's cost grows with resolution."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import int_list


def _cost(args: argparse.Namespace) -> None:
    from ..cost import cost_table, format_table, plot_costs, to_dicts

    rows = cost_table(args.model, int_list("img-size", args.img_size), latency=not args.no_latency)
    print(json.dumps(to_dicts(rows), indent=2) if args.json else format_table(rows))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cost.json").write_text(json.dumps({"model": args.model, "rows": to_dicts(rows)}, indent=2))
        plot_costs(rows, out / "cost.png", f"{args.model}: forward cost per image")
        print(f"wrote {out}/cost.json and {out}/cost.png")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="tokens, attention entries, FLOPs by part and latency per resolution",
                       description="How a ViT's cost grows with resolution: tokens, attention-matrix entries, "
                                   "forward FLOPs split into patch embedding / attention (and its quadratic "
                                   "T x T part) / MLP, the attention matrix's memory, and, measured, the "
                                   "activation memory a training forward keeps per image and the batch-1 "
                                   "CPU latency. FLOPs count a multiply-add as 2.")
    p.add_argument("--model", required=True, metavar="NAME", help="registered ViT name (see `vitkit models`)")
    p.add_argument("--img-size", default="128,224,384,512", metavar="N,N,...",
                   help="comma-separated resolutions, multiples of the patch size (default 128,224,384,512)")
    p.add_argument("--no-latency", action="store_true",
                   help="skip the measurements (latency, activation memory): closed form only")
    p.add_argument("--out", metavar="DIR", help="also write cost.json and a log-log plot cost.png here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_cost)
