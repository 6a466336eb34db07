"""Anything vitkit can run, made ready for inference: a run folder, a vitkit / timm / Hugging Face /
official .npz file, a Hub name, or an exported ONNX file, with the preprocessing and class names that
travel with it. eval, predict, explain, analyze, fewshot and the server all load through here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .checkpoint import is_vitkit_file, load_weights
from .data.transforms import Preprocess
from .devices import resolve_device
from .errors import VitkitError, unknown
from .models.inference import inference_model
from .models.vit import VisionTransformer
from .precision import PRECISIONS, choose, in_precision
from .run_dir import RunDir


@dataclass
class Loaded:
    """A model in eval mode, the metadata it came with, and what eval/predict need from that."""
    model: nn.Module
    meta: dict[str, Any]
    source: str
    runtime: str = "pytorch"          # an exported file's: onnxruntime | openvino, and why
    runtime_reason: str = "a PyTorch model"

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

    def for_inference(self, precision: str = "auto", compile: bool = False, runtime: str = "pytorch") -> "Ready":
        """The model ready for inference and what it runs in: `precision` auto follows vitkit.precision's
        rule for the model's device (an exported file runs in the precision it was written in); a PyTorch
        model runs on `runtime` pytorch or openvino, `auto` by `decide_checkpoint_runtime`."""
        params = list(self.model.parameters())
        if not params:
            return self._exported_ready(precision)
        device = params[0].device
        chosen, why = choose(precision, device)
        on, on_why = checkpoint_runtime(runtime, self.model, device, chosen, compile)
        if on == "openvino":
            from .engines.openvino import from_checkpoint

            return Ready(from_checkpoint(inference_model(self.model), self.meta, chosen), chosen, why, on, on_why)
        return Ready(inference_model(in_precision(self.model, chosen), compile), chosen, why, on, on_why)


    def _exported_ready(self, precision: str) -> "Ready":
        """An exported file: on OpenVINO in `precision` (auto: bf16 IRs in bf16, other files in vitkit's
        automatic precision), on onnxruntime as it was written (fp32, or its int8 operators)."""
        if precision not in PRECISIONS:
            raise unknown("precision", precision, PRECISIONS)
        model = self.model
        if self.runtime == "openvino" and precision in ("fp32", "bf16"):
            model = self.model = model.in_precision(precision)
            return Ready(model, model.precision, "as asked", self.runtime, self.runtime_reason)
        if self.runtime == "openvino" and precision == "auto":
            return Ready(model, model.precision, model.precision_reason, self.runtime, self.runtime_reason)
        if precision not in ("auto", "fp32"):
            where = "on OpenVINO" if self.runtime == "openvino" else "with --runtime openvino"
            raise VitkitError(f"--precision {precision}: {self.source} runs on {self.runtime} in the precision it "
                              f"was written in (fp32 and bf16 are chosen {where})")
        return Ready(inference_model(model), "as exported", "an exported file runs as it was written",
                     self.runtime, self.runtime_reason)


class Ready(NamedTuple):
    """A model ready for inference, the precision and runtime it computes in, and why each."""
    model: nn.Module
    precision: str
    precision_reason: str
    runtime: str
    runtime_reason: str


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


RUNTIMES = ("auto", "pytorch", "onnxruntime", "openvino")


def decide_runtime(path: str, isa: set[str], openvino_installed: bool, int8_onnx: bool) -> tuple[str, str]:
    """(runtime, why) `--runtime auto` takes for an exported file: the rule docs/export.md states.

    Measured (benchmarks/throughput.py, 2026-12-03, docs/export.md): on a 2-core Xeon with AVX-512,
    OpenVINO (f32) ran vitkit's fp32 .onnx 1.04-1.79x as fast as onnxruntime for the MNIST model,
    ViT-S/16 and ViT-B/16 at batch 32, all but ViT-B/16 at batch 1 (0.82x there, in noisy rounds); on
    an AVX2-only EPYC (Zen 3) onnxruntime was faster in all but one case; on a Zen 4 EPYC (AVX512-BF16,
    2026-12-04) OpenVINO in bf16 ran the MNIST model and ViT-S/16 1.07-3.0x as fast as onnxruntime's
    fp32. vitkit's int8 .onnx uses onnxruntime's own operators (QAttention)."""
    if path.endswith(".xml"):
        return "openvino", "an OpenVINO IR"
    if int8_onnx:
        return "onnxruntime", "an int8 file written for onnxruntime's kernels"
    return _openvino_where(isa, {"avx512f"}, openvino_installed, "onnxruntime",
                           "faster than OpenVINO for .onnx files on CPUs without AVX-512 (measured on Zen 3)",
                           "faster than onnxruntime for fp32 .onnx files on AVX-512 CPUs (measured on a Xeon and Zen 4)")


def _openvino_where(isa: set[str], measured: set[str], installed: bool, other: str, other_why: str,
                    why: str) -> tuple[str, str]:
    """OpenVINO on CPUs with one of the `measured` instruction sets, where it measured faster, if it is
    installed; else `other`."""
    if not isa & measured:
        return other, other_why
    if not installed:
        return other, "OpenVINO would be faster on this CPU: pip install 'vitkit[openvino]'"
    return "openvino", why


def decide_checkpoint_runtime(isa: set[str], openvino_installed: bool, device: str, vit: bool) -> tuple[str, str]:
    """(runtime, why) `--runtime auto` takes for a PyTorch model (a checkpoint, not an exported file).

    Measured (benchmarks/throughput.py --processes, 2026-12-03, docs/export.md) against vitkit's own
    PyTorch path: on a 2-core Xeon with AVX-512, the checkpoint converted for OpenVINO (f32) ran the
    MNIST model 2.9x as fast at batch 1 and 1.37x at 32, ViT-S/16 1.26x / 1.09x, ViT-B/16 1.01x / 1.13x;
    on a 2-core AVX2-only EPYC (Zen 3), OpenVINO ran the same graph, as vitkit's .onnx file, 3.7x /
    1.37x (MNIST) and 1.29x / 1.00x (ViT-S/16) as fast as PyTorch; on a Zen 4 EPYC (AVX512-BF16,
    2026-12-04), in bf16, 0.93-1.22x PyTorch's bf16 for ViT-S/16 and B/16 and 2-4x for MNIST; on a Xeon
    with AMX (2026-12-07), in bf16, 1.06-1.82x for ViTs and 2.2-5.3x for MNIST. Other CPUs (ARM) and CNN
    checkpoints were not measured: PyTorch stays."""
    if device != "cpu":
        return "pytorch", f"OpenVINO's CPU plugin does not run on {device}"
    if not vit:
        return "pytorch", "OpenVINO was measured on ViTs only"
    return _openvino_where(isa, {"avx2", "avx512f"}, openvino_installed, "pytorch",
                           "PyTorch on CPUs without AVX2 (OpenVINO not measured there)",
                           "faster than PyTorch for ViTs on x86 CPUs with AVX2/AVX-512 (measured on Xeons "
                           "with and without AMX, Zen 3 and Zen 4); converted once, cached")


def checkpoint_runtime(runtime: str, model: nn.Module, device: torch.device, precision: str,
                       compile: bool) -> tuple[str, str]:
    """(runtime, why) for a PyTorch model asked to run on `runtime`: `decide_checkpoint_runtime` for auto,
    where `VITKIT_AUTO_RUNTIME` pins it (openvino: OpenVINO; onnxruntime or pytorch: PyTorch)."""
    import importlib.util
    import os

    from .machine import describe

    if runtime == "onnxruntime":
        raise VitkitError("--runtime onnxruntime runs exported files: `vitkit export` the checkpoint first, or use "
                          "--runtime pytorch|openvino")
    if runtime == "openvino" and (compile or precision == "fp16" or not hasattr(model, "cfg")):
        what = "--compile" if compile else "--precision fp16" if precision == "fp16" else "a model that is not vitkit's"
        raise VitkitError(f"--runtime openvino: {what} runs on PyTorch only (use --runtime pytorch)")
    if runtime != "auto":
        return runtime, "asked for"
    if compile:
        return "pytorch", "--compile compiles the PyTorch model"
    if precision == "fp16":
        return "pytorch", "fp16 runs on PyTorch"
    pinned = os.environ.get(RUNTIME_PIN_ENV, "")
    if pinned:
        if pinned not in ("onnxruntime", "openvino", "pytorch"):
            raise VitkitError(f"{RUNTIME_PIN_ENV}={pinned!r}: expected onnxruntime, openvino or pytorch")
        return ("openvino" if pinned == "openvino" else "pytorch"), f"auto, pinned by {RUNTIME_PIN_ENV}"
    installed = importlib.util.find_spec("openvino") is not None
    return decide_checkpoint_runtime(set(describe()["isa"]), installed, device.type,
                                     isinstance(model, VisionTransformer))


RUNTIME_PIN_ENV = "VITKIT_AUTO_RUNTIME"


def auto_runtime(path: str) -> tuple[str, str]:
    """`decide_runtime` for this machine and file; `VITKIT_AUTO_RUNTIME=onnxruntime|openvino` pins what
    `auto` means for .onnx files (the tests pin it, so they run alike on every kind of machine)."""
    import importlib.util
    import os

    from .machine import describe

    pinned = os.environ.get(RUNTIME_PIN_ENV, "")
    if pinned and path.endswith(".onnx"):
        if pinned not in ("onnxruntime", "openvino", "pytorch"):
            raise VitkitError(f"{RUNTIME_PIN_ENV}={pinned!r}: expected onnxruntime, openvino or pytorch")
        return ("openvino" if pinned == "openvino" else "onnxruntime"), f"auto, pinned by {RUNTIME_PIN_ENV}"
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
    fp32 .onnx file on a CPU with AVX-512 where OpenVINO is installed; else onnxruntime). For a
    checkpoint it is only checked here: `Loaded.for_inference` applies it."""
    device = resolve_device(device)
    if runtime not in RUNTIMES:
        raise VitkitError(f"unknown runtime '{runtime}' ({', '.join(RUNTIMES)})")
    s = str(source)
    if s.endswith((".onnx", ".xml")):
        if not Path(s).is_file():
            raise VitkitError(f"checkpoint {s} does not exist")
        if s.endswith(".xml") and runtime == "onnxruntime":
            raise VitkitError(f"{s} is an OpenVINO IR: run it with --runtime openvino (or auto)")
        if runtime == "pytorch":
            raise VitkitError(f"--runtime pytorch runs checkpoints; {s} is an exported file: use --runtime "
                              "auto|onnxruntime|openvino")
        why = "asked for"
        if runtime == "auto":
            runtime, why = auto_runtime(s)
        if runtime == "openvino":
            from .engines.openvino import OpenVINOModel

            model = OpenVINOModel(s)
        else:
            from .engines.onnx import OnnxModel

            model = OnnxModel(s)
        return Loaded(model, model.meta, s, runtime, why)
    if runtime == "onnxruntime":
        raise VitkitError(f"--runtime onnxruntime runs exported files (.onnx); {s} is a checkpoint: export it "
                          "first, or use --runtime pytorch|openvino")
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
