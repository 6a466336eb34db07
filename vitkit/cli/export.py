"""`vitkit export`: a deployment file (ONNX fp32 or int8), checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import checkpoint_flag


def _export(args: argparse.Namespace) -> None:
    from ..export import export_int8, export_onnx, export_openvino

    check = not args.no_check
    if args.format == "openvino":
        if args.dynamic_size:
            from ..errors import VitkitError
            raise VitkitError("--dynamic-size: not for OpenVINO files yet; export at the checkpoint's size")
        r = export_openvino(args.checkpoint, args.out, args.precision, args.opset, check=check)
    elif args.format == "onnx":
        r = export_onnx(args.checkpoint, args.out, args.opset, check=check, dynamic_size=args.dynamic_size)
    else:
        r = export_int8(args.checkpoint, args.out, args.opset, check=check, fuse=args.fuse,
                        dynamic_size=args.dynamic_size)
    sizes = ", ".join(f"{h}x{w}" for h, w in r.get("checked_sizes", []))
    engine = "OpenVINO (f32)" if args.format == "openvino" else "onnxruntime"
    diff = f"; {engine} vs PyTorch max |diff| {r['max_abs_diff']:.2e} at {sizes}" if "max_abs_diff" in r else ""
    if "top1_agreement" in r:
        diff += f", top-1 agreement {100 * r['top1_agreement']:.1f}% on random input"
    print(f"wrote {r['path']} (input {'x'.join(str(v) for v in r['input'])}, opset {r['opset']}){diff}")
    if args.data:  # what the file costs in accuracy, on real images with the checkpoint's own preprocessing
        from ..evaluate import evaluate_checkpoint
        before = evaluate_checkpoint(args.checkpoint, args.data, args.split)["top1"]
        after = evaluate_checkpoint(args.out, args.data, args.split)["top1"]
        print(f"{args.data} [{args.split}] top-1: checkpoint {100 * before:.2f}% -> {Path(args.out).name} "
              f"{100 * after:.2f}% ({100 * (after - before):+.2f} points)")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a deployment file (ONNX, fp32 or int8) and check it against PyTorch",
                       description="Export a checkpoint (any weights format vitkit reads) to ONNX with a dynamic "
                                   "batch dimension at the checkpoint's image size (any size with --dynamic-size), "
                                   "then run it in onnxruntime and compare the logits with PyTorch's (onnx: fails "
                                   "above 1e-4). The file carries the preprocessing and classes: `vitkit "
                                   "eval/predict --checkpoint FILE.onnx` run it.")
    checkpoint_flag(p)
    p.add_argument("--format", default="onnx", choices=["onnx", "int8", "openvino"],
                   help="onnx (default): fp32; int8: dynamic int8 quantisation of every matrix multiply (per-channel "
                        "weights) for CPU inference with onnxruntime; openvino: an OpenVINO IR (NAME.xml + NAME.bin)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="openvino only: the precision the IR is run in (default fp32; bf16 where the CPU computes it)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, e.g. model.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--dynamic-size", action="store_true",
                   help="free height and width too (multiples of the patch size; the position table is "
                        "resampled in 2D inside the file); checked at the checkpoint's size and a larger one. "
                        "Not for models resampled with antialiasing")
    p.add_argument("--data", metavar="SPEC",
                   help="also evaluate the checkpoint and the written file on this data (as `vitkit eval`) and "
                        "print both top-1 accuracies: what the export costs, int8 above all")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split for --data (default test)")
    p.add_argument("--fuse", default="attention", choices=["attention", "none"],
                   help="int8 only: attention (default, faster here) = onnxruntime's fused int8 attention "
                        "kernel (QAttention); none = plain ONNX operators")
    p.set_defaults(func=_export)
