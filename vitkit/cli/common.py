"""Flags that several commands share, each written once."""

from __future__ import annotations

import argparse

from ..errors import VitkitError


def checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="SRC",
                   help="a run folder (its best checkpoint), weights in any format vitkit reads, or (eval, "
                        "predict) a file written by `vitkit export`")


def compile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="compile the model with frozen weights first (torch.compile): faster per image, but the "
                        "first batch of each size waits 10-30 s for the compiler; pays on thousands of images")


def device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N or mps (default cpu)")


def precision_flag(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    p.add_argument("--precision", default=default, choices=["auto", "fp32", "bf16", "fp16"],
                   help="what the model computes in (default auto: bf16 where the hardware computes it natively "
                        "- CPUs with AMX-BF16/AVX512-BF16, GPUs from compute capability 8.0 -, else fp32; "
                        "`vitkit env` shows the choice here)")


def runtime_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="auto", choices=["auto", "pytorch", "onnxruntime", "openvino"],
                   help="what runs the model (default auto, where OpenVINO measured faster and is installed: "
                        "OpenVINO for ViT checkpoints on x86 CPUs with AVX2/AVX-512 (converted once, cached in "
                        "~/.cache/vitkit/openvino), for IR .xml files, and for fp32 .onnx files on AVX-512 CPUs; "
                        "else PyTorch for checkpoints and onnxruntime for .onnx files; `vitkit env` shows the "
                        "choice; openvino needs pip install 'vitkit[openvino]')")


def data_flag(p: argparse.ArgumentParser, required: bool = True, what: str = "") -> None:
    p.add_argument("--data", required=required, metavar="SPEC",
                   help=f"data spec, as for train{what}")


def images_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help=f"image files {what} (any format PIL reads)")
    p.add_argument("--top-k", type=int, default=5, help="classes to report per image (default 5)")


def resume_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")


def int_list(flag: str, text: str) -> list[int]:
    """`1,5,10` (underscores allowed: 60_000) -> [1, 5, 10], or a one-line error naming the flag."""
    try:
        return [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VitkitError(f"--{flag} expects comma-separated integers, got '{text}'") from None
