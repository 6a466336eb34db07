"""An exported model run by OpenVINO behind the nn.Module interface: an IR written by
`vitkit export --format openvino` (.xml + .bin), or any .onnx file vitkit exported.

OpenVINO picks its own inference precision per CPU (bf16 where the CPU computes it natively, else
f32); `precision="fp32"` forces f32 (`INFERENCE_PRECISION_HINT`), which the parity tests use.
The LATENCY hint is the default: each call is one synchronous request, and THROUGHPUT's parallel
streams then leave cores idle (ViT-S/16 at batch 32: 8.3 against 14.3 img/s, docs/export.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import META_KEY, config_from_meta
from ..errors import VitkitError

RT_INFO = [META_KEY, "meta"]   # where an IR keeps vitkit's metadata
HINTS = ("LATENCY", "THROUGHPUT")


def openvino():
    """The openvino module, or a one-line error that says how to get it."""
    try:
        import openvino as ov
    except ImportError:
        raise VitkitError("OpenVINO files need openvino: pip install 'vitkit[openvino]'") from None
    return ov


def read_meta(path: str | Path) -> dict[str, Any]:
    """vitkit's metadata of an IR (rt_info) or of an exported .onnx file (metadata_props)."""
    p = Path(path)
    if p.suffix == ".onnx":
        import onnx

        props = {m.key: m.value for m in onnx.load(str(p), load_external_data=False).metadata_props}
        if META_KEY not in props:
            raise VitkitError(f"{p} carries no vitkit metadata (export it with `vitkit export`)")
        return json.loads(props[META_KEY])
    model = openvino().Core().read_model(str(p))
    if not model.has_rt_info(RT_INFO):
        raise VitkitError(f"{p} carries no vitkit metadata (export it with `vitkit export --format openvino`)")
    return json.loads(model.get_rt_info(RT_INFO).astype(str))


class OpenVINOModel(nn.Module):
    """An IR or .onnx file compiled for OpenVINO's CPU plugin, with the config and metadata it carries."""

    def __init__(self, path: str | Path, precision: str | None = None, hint: str = "LATENCY"):
        """`precision`: fp32 or bf16 forces OpenVINO's inference precision; "auto" leaves it to OpenVINO
        (bf16 wherever the CPU has AVX512-BF16, also where that is slower); None takes what the file was
        exported for: bf16 IRs run in bf16, fp32 IRs and .onnx files in f32, and an int8 IR's float
        parts follow vitkit's own rule (vitkit.precision: bf16 only where it measured faster)."""
        super().__init__()
        ov = openvino()
        if hint not in HINTS:
            raise VitkitError(f"OpenVINO performance hint '{hint}': choose {' or '.join(HINTS)}")
        config: dict[str, str] = {"PERFORMANCE_HINT": hint}
        self.meta = read_meta(path)
        # None: what `vitkit export` was asked for; "auto": OpenVINO's own choice for this CPU
        if precision is None:
            precision = self.meta.get("openvino_precision") or "fp32"
            if precision == "int8":
                from ..precision import choose
                precision = choose("auto", torch.device("cpu"))[0]
        if precision in ("fp32", "bf16"):
            config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
        if torch.get_num_threads() < (os.cpu_count() or 1):  # told to use fewer cores (serve --workers)
            config["INFERENCE_NUM_THREADS"] = str(torch.get_num_threads())
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own types for a bad file
            raise VitkitError(f"{path}: not a loadable OpenVINO model ({str(e).splitlines()[0][:200]})") from None
        self.cfg = config_from_meta(self.meta)
        self.num_classes = self.cfg.num_classes
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits on the device the images came from (OpenVINO runs on the CPU)."""
        out = self.compiled(x.detach().float().cpu().contiguous().numpy())[0]
        return torch.from_numpy(out).to(x.device)
