"""`vitkit env`: the machine as vitkit's speed choices see it, and what vitkit would choose here."""

from __future__ import annotations

import argparse
import json


def _env(args: argparse.Namespace) -> None:
    import torch

    from ..devices import resolve_device
    from ..machine import describe, format_description
    from ..precision import choose

    info = describe()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    choices = {}
    for name in devices:
        chosen, why = choose("auto", resolve_device(name))
        choices[f"precision on {name}"] = f"{chosen} ({why})"
    from ..load import decide_checkpoint_runtime, decide_runtime
    ckpt = decide_checkpoint_runtime(set(info["isa"]), bool(info["versions"]["openvino"]), "cpu", True)
    choices["runtime for ViT checkpoints on cpu"] = f"{ckpt[0]} ({ckpt[1]})"
    fp32 = decide_runtime("m.onnx", set(info["isa"]), bool(info["versions"]["openvino"]), False)
    on_openvino = f", in {choose('auto', resolve_device('cpu'))[0]} as checkpoints" if fp32[0] == "openvino" else ""
    choices["runtime for fp32 .onnx"] = f"{fp32[0]}{on_openvino} ({fp32[1]})"
    int8 = decide_runtime("m.onnx", set(info["isa"]), bool(info["versions"]["openvino"]), True)
    choices["runtime for int8 .onnx"] = f"{int8[0]} ({int8[1]})"
    choices["runtime for .xml (IR)"] = ("OpenVINO" if info["versions"]["openvino"]
                                        else "OpenVINO (not installed: pip install 'vitkit[openvino]')")
    if args.json:
        print(json.dumps({**info, "choices": choices}, indent=2))
    else:
        print(format_description(info, choices))


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="this machine as vitkit sees it: CPU, instruction sets, GPU, versions, choices",
                       description="Print the CPU model and the instruction sets that decide which precisions it "
                                   "computes natively (AVX2, AVX-512, VNNI, AVX512-BF16, AMX, FP16), the logical "
                                   "CPUs and torch's threads, the GPUs, the versions of torch, onnxruntime and "
                                   "OpenVINO, and the precision and runtime vitkit would choose here. The same "
                                   "description is stored in benchmark results, summary.json and exported files.")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=_env)
