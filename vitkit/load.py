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


def load(source: str | Path, device: str | torch.device = "cpu", runtime: str = "auto") -> Loaded:
    """The model `source` describes, loaded, in eval mode, with its metadata (preprocessing, classes).
    `device` is checked first (`cuda` on a machine without one, `cuda:9`, `gpu`: one-line errors).
    `runtime` runs an exported file: `auto` takes OpenVINO for an IR (.xml) and onnxruntime for .onnx
    (the runtime vitkit's ONNX figures were measured with; docs/export.md)."""
    device = resolve_device(device)
    if runtime not in RUNTIMES:
        raise VitkitError(f"unknown runtime '{runtime}' ({', '.join(RUNTIMES)})")
    s = str(source)
    if s.endswith((".onnx", ".xml")):
        if not Path(s).is_file():
            raise VitkitError(f"checkpoint {s} does not exist")
        if s.endswith(".xml") and runtime == "onnxruntime":
            raise VitkitError(f"{s} is an OpenVINO IR: run it with --runtime openvino (or auto)")
        if s.endswith(".xml") or runtime == "openvino":
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
