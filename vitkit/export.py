"""Deployment files: ONNX with a dynamic batch dimension, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .checkpoint import atomic_write, load_checkpoint
from .errors import VitkitError

FORMATS = ("onnx",)


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17, check: bool = True) -> dict:
    """Write `out` (.onnx) for batches of any size at the checkpoint's image size (the position-embedding
    resampling is traced at that size), then compare onnxruntime's logits with PyTorch's."""
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    h, w = model.cfg.img_size
    x = torch.randn(2, model.cfg.in_chans, h, w)
    out = Path(out)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about the (constant) grid size
            torch.onnx.export(model, (x,), tmp, input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)

    atomic_write(out, write)
    result = {"path": str(out), "input": ["batch", model.cfg.in_chans, h, w], "opset": opset}
    if check:
        result["max_abs_diff"] = onnx_max_abs_diff(model, out, torch.randn(3, model.cfg.in_chans, h, w))
        if result["max_abs_diff"] > 1e-4:
            raise VitkitError(f"{out}: onnxruntime differs from PyTorch by {result['max_abs_diff']:.2e} (> 1e-4)")
    return result


def onnx_max_abs_diff(model: torch.nn.Module, path: Path, x: torch.Tensor) -> float:
    try:
        import onnxruntime as ort
    except ImportError:
        raise VitkitError("checking the ONNX file needs onnxruntime: pip install 'vitkit[onnx]' "
                          "(or export with --no-check)") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    return float(abs(got - want).max())
