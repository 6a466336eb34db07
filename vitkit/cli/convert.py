"""`vitkit convert`: weights from one format to another."""

from __future__ import annotations

import argparse


def _convert(args: argparse.Namespace) -> None:
    from ..interop import load_model, save_model

    model = load_model(args.src)
    dst = save_model(model, args.dst, args.to, getattr(model, "pretrained_cfg", {}))
    print(f"{args.src} ({model.pretrained_cfg['format']}) -> {dst} ({args.to})")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert weights between vitkit, timm, Hugging Face and official .npz",
                       description="Read weights in any supported format and write them in another; the model "
                                   "is rebuilt from the tensors and must give the same logits.")
    p.add_argument("src", metavar="SRC", help="weights file, folder or Hub name")
    p.add_argument("dst", metavar="DST", help="output file (.safetensors, .pth, .npz) or folder (hf)")
    p.add_argument("--to", required=True, choices=["vitkit", "timm", "hf", "npz"], help="the format to write: vitkit (safetensors + metadata), timm, hf (a folder), npz (official)")
    p.set_defaults(func=_convert)
