"""`vitkit export`: a deployment file (ONNX fp32 or int8, OpenVINO IR fp32/bf16/int8), checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import checkpoint_flag


def _export(args: argparse.Namespace) -> None:
    from ..errors import VitkitError
    from ..export import export_int8, export_onnx, export_openvino

    check = not args.no_check
    if args.precision != "fp32" and args.format != "openvino":
        raise VitkitError(f"--precision {args.precision}: for --format openvino (an ONNX file is fp32; "
                          "--format int8 is int8)")
    openvino_int8 = args.format == "openvino" and args.precision == "int8"
    if args.int8_scheme != "auto" and not openvino_int8:
        raise VitkitError(f"--int8-scheme {args.int8_scheme}: for --format openvino --precision int8")
    if args.max_accuracy_drop < 0:
        raise VitkitError(f"--max-accuracy-drop {args.max_accuracy_drop}: a loss in points, >= 0")

    def write_openvino(scheme: str) -> dict:
        return export_openvino(args.checkpoint, args.out, args.precision, args.opset, check=check, data=args.data,
                               calibration_count=args.calibration_images, dynamic_size=args.dynamic_size,
                               int8_scheme=scheme)

    if args.format == "openvino":
        r = write_openvino(args.int8_scheme)
        if r.get("int8_speed"):
            rates = ", ".join(f"{k} {v:,.0f}" for k, v in r["int8_speed"].items())
            print(f"int8 schemes here, images/s at batch 32: {rates}: wrote {r['int8_scheme']}")
    elif args.format == "onnx":
        r = export_onnx(args.checkpoint, args.out, args.opset, check=check, dynamic_size=args.dynamic_size)
    else:
        r = export_int8(args.checkpoint, args.out, args.opset, check=check, fuse=args.fuse,
                        dynamic_size=args.dynamic_size)
    sizes = ", ".join(f"{h}x{w}" for h, w in r.get("checked_sizes", []))
    engine = "onnxruntime" if args.format != "openvino" else "OpenVINO" if args.precision == "int8" else "OpenVINO (f32)"
    diff = f"; {engine} vs PyTorch max |diff| {r['max_abs_diff']:.2e} at {sizes}" if "max_abs_diff" in r else ""
    if "top1_agreement" in r:
        diff += f", top-1 agreement {100 * r['top1_agreement']:.1f}% on random input"
    print(f"wrote {r['path']} (input {'x'.join(str(v) for v in r['input'])}, opset {r['opset']}){diff}")
    if not args.data:
        return
    # what the file costs in accuracy, on real images with the checkpoint's own preprocessing
    from ..evaluate import evaluate_checkpoint

    def report() -> float:
        after = evaluate_checkpoint(args.out, args.data, args.split)["top1"]  # in the precision it runs in here
        print(f"{args.data} [{args.split}] top-1: checkpoint {100 * before:.2f}% -> {Path(args.out).name} "
              f"{100 * after:.2f}% ({100 * (after - before):+.2f} points)")
        return 100 * (before - after)

    before = evaluate_checkpoint(args.checkpoint, args.data, args.split, precision="fp32")["top1"]
    drop = report()
    if openvino_int8 and args.int8_scheme == "auto" and drop > args.max_accuracy_drop:
        print(f"the {r['int8_scheme']} int8 scheme loses {drop:.2f} points (> --max-accuracy-drop {args.max_accuracy_drop}): "
              "writing the accurate one (SmoothQuant, asymmetric activations)")
        write_openvino("accurate")
        report()


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a deployment file (ONNX fp32/int8, OpenVINO IR) and check it against PyTorch",
                       description="Export a checkpoint (any weights format vitkit reads) to ONNX or an OpenVINO IR "
                                   "with a dynamic batch dimension at the checkpoint's image size (any size with "
                                   "--dynamic-size), then run it (onnxruntime, OpenVINO) and compare the logits with "
                                   "PyTorch's (fp32 files: fails above 1e-4). The file carries the preprocessing and "
                                   "classes: `vitkit eval/predict --checkpoint FILE.onnx|FILE.xml` run it.")
    checkpoint_flag(p)
    p.add_argument("--format", default="onnx", choices=["onnx", "int8", "openvino"],
                   help="onnx (default): fp32; int8: dynamic int8 quantisation of every matrix multiply (per-channel "
                        "weights) for CPU inference with onnxruntime; openvino: an OpenVINO IR (NAME.xml + NAME.bin)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
                   help="openvino only (default fp32): fp32 = fp32 weights, run like a checkpoint in vitkit's "
                        "automatic precision on the machine that runs it (bf16 where it measured faster; "
                        "`--precision fp32` at eval/predict/serve forces f32); bf16 = always run in bf16; int8 = "
                        "NNCF post-training quantisation, calibrated on --data's training images")
    p.add_argument("--calibration-images", type=int, default=300, metavar="N",
                   help="openvino int8: how many training images of --data calibrate the int8 ranges, the same "
                        "share of every class (default 300)")
    p.add_argument("--int8-scheme", default="auto", choices=["auto", "fast", "mlp", "accurate"],
                   help="openvino int8 only: fast = every projection in int8, symmetric activations, no SmoothQuant "
                        "(1.2x the accurate scheme's speed on an AMX Xeon); mlp = the same for the MLP layers only "
                        "(attention and head stay in floating point: faster for narrow models, e.g. width 128); "
                        "accurate = NNCF's defaults for transformers (asymmetric activations, SmoothQuant for "
                        "outlier channels); auto (default) = fast and mlp both, the faster at batch 32 on this "
                        "machine written, and accurate instead if that loses more than --max-accuracy-drop on "
                        "--data's --split")
    p.add_argument("--max-accuracy-drop", type=float, default=0.3, metavar="POINTS",
                   help="--int8-scheme auto: the top-1 loss (percentage points) the faster scheme may cost "
                        "(default 0.3)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, e.g. model.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--dynamic-size", action="store_true",
                   help="free height and width too (multiples of the patch size; the position table is "
                        "resampled in 2D inside the file); checked at the checkpoint's size and a larger one. "
                        "Not for models resampled with antialiasing")
    p.add_argument("--data", metavar="SPEC",
                   help="also evaluate the checkpoint (fp32) and the written file (in the precision it runs in here by "
                        "default) on this "
                        "data (as `vitkit eval`) and print both top-1 accuracies: what the export costs; for "
                        "openvino int8 also the calibration images")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split for --data (default test)")
    p.add_argument("--fuse", default="attention", choices=["attention", "none"],
                   help="int8 only: attention (default, faster here) = onnxruntime's fused int8 attention "
                        "kernel (QAttention); none = plain ONNX operators")
    p.set_defaults(func=_export)
