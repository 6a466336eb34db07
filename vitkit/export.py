"""Deployment files: ONNX with a dynamic batch dimension, checked against PyTorch with onnxruntime, and
its int8 variant (dynamic quantisation of the matrix-multiply weights, onnxruntime's VNNI kernels).

Both carry the checkpoint's metadata (model config, preprocessing, classes) in the ONNX file's
metadata, so `vitkit eval` and `vitkit predict` run them like any checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import META_KEY, atomic_write, load_checkpoint
from .errors import VitkitError

FORMATS = ("onnx", "int8")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise VitkitError("ONNX files need onnxruntime and onnx: pip install 'vitkit[onnx]'") from None
    return onnxruntime


def _write_onnx(model: nn.Module, meta: dict[str, Any], path: str, opset: int) -> None:
    import onnx
    h, w = model.cfg.img_size
    x = torch.randn(2, model.cfg.in_chans, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about the (constant) grid size
        torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(proto, path)


def _load_source(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    if str(checkpoint).endswith(".onnx"):
        raise VitkitError(f"{checkpoint} is already an exported file; export from the checkpoint it came from")
    return load_checkpoint(checkpoint)


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17, check: bool = True) -> dict:
    """Write `out` (.onnx) for batches of any size at the checkpoint's image size (the position-embedding
    resampling is traced at that size), then compare onnxruntime's logits with PyTorch's."""
    model, meta = _load_source(checkpoint)
    out = Path(out)
    atomic_write(out, lambda tmp: _write_onnx(model, meta, tmp, opset))
    result = _describe(model, out, opset)
    if check:
        result["max_abs_diff"] = onnx_max_abs_diff(model, out, _probe(model))
        if result["max_abs_diff"] > 1e-4:
            raise VitkitError(f"{out}: onnxruntime differs from PyTorch by {result['max_abs_diff']:.2e} (> 1e-4)")
    return result


def export_int8(checkpoint: str | Path, out: str | Path, opset: int = 17, check: bool = True) -> dict:
    """Write `out` (.onnx) with int8 weights for every matrix multiply (per output channel) and int8
    activations quantised on the fly; normalisation, softmax and the patch convolution stay fp32.
    The check reports the largest logit difference and top-1 agreement with PyTorch on random input."""
    ort = _onnxruntime()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, meta = _load_source(checkpoint)
    out = Path(out)
    meta = {**meta, "quantization": "dynamic int8 (onnxruntime), per-channel weights"}

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            fp32 = os.path.join(d, "fp32.onnx")
            _write_onnx(model, meta, fp32, opset)
            quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        proto = onnx.load(tmp)
        if not any(p.key == META_KEY for p in proto.metadata_props):
            entry = proto.metadata_props.add()
            entry.key, entry.value = META_KEY, json.dumps(meta)
            onnx.save(proto, tmp)

    atomic_write(out, write)
    result = _describe(model, out, opset)
    if check:
        x = _probe(model, 16)
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        with torch.inference_mode():
            want = model(x)
        result["max_abs_diff"] = float((got - want).abs().max())
        result["top1_agreement"] = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    return result


def _probe(model: nn.Module, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, model.cfg.in_chans, *model.cfg.img_size)


def _describe(model: nn.Module, out: Path, opset: int) -> dict:
    return {"path": str(out), "input": ["batch", model.cfg.in_chans, *model.cfg.img_size], "opset": opset}


def onnx_max_abs_diff(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    return float(abs(got - want).max())


class OnnxModel(nn.Module):
    """An exported file run by onnxruntime behind the nn.Module interface eval/predict use."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise VitkitError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise VitkitError(f"{path} carries no vitkit metadata (export it with `vitkit export`)")
        self.meta = json.loads(props[META_KEY])
        from .checkpoint import config_from_meta
        self.cfg = config_from_meta(self.meta)
        self.num_classes = self.cfg.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu().contiguous()
        return torch.from_numpy(self.session.run(None, {"images": x.numpy()})[0])


def load_onnx(path: str | Path) -> tuple[OnnxModel, dict[str, Any]]:
    model = OnnxModel(path)
    return model, model.meta
