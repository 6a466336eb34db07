"""Anything vitkit can run, made ready for inference: a run folder, a vitkit / timm / Hugging Face /
official .npz file, a Hub name, or an exported ONNX file, with the preprocessing and class names that
travel with it. eval, predict, explain, analyze, fewshot and the server all load through here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import is_vitkit_file, load_weights
from .data.transforms import Preprocess
from .devices import resolve_device
from .errors import VitkitError
from .models.inference import inference_model
from .precision import choose, in_precision
from .run_dir import RunDir


@dataclass
class Loaded:
    """A model in eval mode, the metadata it came with, and what eval/predict need from that."""
    model: nn.Module
    meta: dict[str, Any]
    source: str

    @property
    def preprocess(self) -> Preprocess:
        """The preprocessing the weights were trained with; without it, images cannot be prepared."""
        if "preprocess" not in self.meta:
            raise VitkitError(f"{self.source} records no preprocessing (input size, mean, std), so images cannot "
                              "be prepared for it; save it with model_meta(model, preprocess=...) or use its run folder")
        return Preprocess.from_dict(self.meta["preprocess"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [str(i) for i in range(self.model.num_classes)])

    def for_inference(self, precision: str = "auto", compile: bool = False) -> tuple[nn.Module, str, str]:
        """(model ready for inference, the precision it computes in, why): `auto` follows vitkit.precision's
        rule for the model's device; an exported file runs in the precision it was written in."""
        params = list(self.model.parameters())
        if not params:
            if precision not in ("auto", "fp32"):
                raise VitkitError(f"--precision {precision}: {self.source} is an exported file, which runs in the "
                                  f"precision it was written in")
            return inference_model(self.model), "as exported", "an exported file runs as it was written"
        chosen, why = choose(precision, params[0].device)
        return inference_model(in_precision(self.model, chosen), compile), chosen, why


def resolve_weights(path: str | Path) -> Path:
    """A run folder means its best weights (else last); a file means itself."""
    p = Path(path)
    if p.is_dir():
        found = RunDir(p).weights()
        if found is None:
            raise VitkitError(f"{p} holds no checkpoint (expected {RunDir(p).best_weights.relative_to(p)})")
        return found
    if not p.is_file():
        raise VitkitError(f"checkpoint {p} does not exist")
    return p


RUNTIMES = ("auto", "onnxruntime", "openvino")


def decide_runtime(path: str, isa: set[str], openvino_installed: bool, int8_onnx: bool) -> tuple[str, str]:
    """(runtime, why) `--runtime auto` takes for an exported file: the rule docs/export.md states.

    Measured (benchmarks/throughput.py, 2026-12-03, docs/export.md): on a 2-core Xeon with AVX-512,
    OpenVINO (f32) ran vitkit's fp32 .onnx 1.04-1.79x as fast as onnxruntime for the MNIST model,
    ViT-S/16 and ViT-B/16 at batch 32, all but ViT-B/16 at batch 1 (0.82x there, in noisy rounds); on
    an AVX2-only EPYC (Zen 3) onnxruntime was faster in all but one case. vitkit's int8 .onnx uses
    onnxruntime's own operators (QAttention)."""
    if path.endswith(".xml"):
        return "openvino", "an OpenVINO IR"
    if int8_onnx:
        return "onnxruntime", "an int8 file written for onnxruntime's kernels"
    if "avx512f" not in isa:
        return "onnxruntime", "faster than OpenVINO for .onnx files on CPUs without AVX-512 (measured on Zen 3)"
    if not openvino_installed:
        return "onnxruntime", "OpenVINO would be faster on this AVX-512 CPU: pip install 'vitkit[openvino]'"
    return "openvino", "faster than onnxruntime for fp32 .onnx files on AVX-512 CPUs (measured on a Xeon)"


RUNTIME_PIN_ENV = "VITKIT_AUTO_RUNTIME"


def auto_runtime(path: str) -> tuple[str, str]:
    """`decide_runtime` for this machine and file; `VITKIT_AUTO_RUNTIME=onnxruntime|openvino` pins what
    `auto` means for .onnx files (the tests pin it, so they run alike on every kind of machine)."""
    import importlib.util
    import os

    from .machine import describe

    pinned = os.environ.get(RUNTIME_PIN_ENV, "")
    if pinned and path.endswith(".onnx"):
        if pinned not in ("onnxruntime", "openvino"):
            raise VitkitError(f"{RUNTIME_PIN_ENV}={pinned!r}: expected onnxruntime or openvino")
        return pinned, f"auto, pinned by {RUNTIME_PIN_ENV}"
    isa, installed = set(describe()["isa"]), importlib.util.find_spec("openvino") is not None
    int8 = False
    if path.endswith(".onnx") and "avx512f" in isa and installed:  # only then does the file's kind matter
        from .engines.openvino import read_meta
        int8 = "int8" in str(read_meta(path).get("quantization", ""))
    return decide_runtime(path, isa, installed, int8)


def load(source: str | Path, device: str | torch.device = "cpu", runtime: str = "auto") -> Loaded:
    """The model `source` describes, loaded, in eval mode, with its metadata (preprocessing, classes).
    `device` is checked first (`cuda` on a machine without one, `cuda:9`, `gpu`: one-line errors).
    `runtime` runs an exported file: `auto` follows `decide_runtime` (OpenVINO for an IR, and for an
    fp32 .onnx file on a CPU with AVX-512 where OpenVINO is installed; else onnxruntime)."""
    device = resolve_device(device)
    if runtime not in RUNTIMES:
        raise VitkitError(f"unknown runtime '{runtime}' ({', '.join(RUNTIMES)})")
    s = str(source)
    if s.endswith((".onnx", ".xml")):
        if not Path(s).is_file():
            raise VitkitError(f"checkpoint {s} does not exist")
        if s.endswith(".xml") and runtime == "onnxruntime":
            raise VitkitError(f"{s} is an OpenVINO IR: run it with --runtime openvino (or auto)")
        if runtime == "auto":
            runtime = auto_runtime(s)[0]
        if runtime == "openvino":
            from .engines.openvino import OpenVINOModel

            model = OpenVINOModel(s)
        else:
            from .engines.onnx import OnnxModel

            model = OnnxModel(s)
        return Loaded(model, model.meta, s)
    if runtime != "auto":
        raise VitkitError(f"--runtime {runtime} runs exported files (.onnx, .xml); {s} runs on PyTorch")
    p = Path(s)
    if (p.is_dir() and RunDir(p).weights() is not None) or is_vitkit_file(p):
        model, meta = load_weights(resolve_weights(p), device)
        return Loaded(model, meta, s)
    from .interop import load_model

    model = load_model(source)
    return Loaded(model.to(device).eval(), dict(model.pretrained_cfg), s)


def load_checkpoint(source: str | Path, device: str | torch.device = "cpu",
                    runtime: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """(model, metadata) of `load(source, device, runtime)`."""
    loaded = load(source, device, runtime)
    return loaded.model, loaded.meta
