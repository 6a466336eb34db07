"""An exported ONNX file (fp32 or int8) run by onnxruntime, behind the nn.Module interface."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import META_KEY, config_from_meta
from ..errors import VitkitError


def onnxruntime():
    """The onnxruntime module, or a one-line error that says how to get it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise VitkitError("ONNX files need onnxruntime and onnx: pip install 'vitkit[onnx]'") from None
    return ort


class OnnxModel(nn.Module):
    """An exported file run by onnxruntime, with the model config and metadata the file carries."""

    def __init__(self, path: str | Path, threads: int | None = None, split: bool = True):
        """`split`: with 2+ threads, run slices of a batch concurrently, one intra-op thread each, instead
        of one run on all threads (7% faster on the int8 MNIST model at batch 32, benchmarks/int8.py:
        small matrices parallelise badly inside one operator, while a session runs concurrently
        without the GIL)."""
        super().__init__()
        ort = onnxruntime()
        threads = threads or torch.get_num_threads()
        self.parts = threads if split else 1
        self._pool: ThreadPoolExecutor | None = None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if self.parts > 1 else threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise VitkitError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise VitkitError(f"{path} carries no vitkit metadata (export it with `vitkit export`)")
        self.meta: dict[str, Any] = json.loads(props[META_KEY])
        self.cfg = config_from_meta(self.meta)
        self.num_classes = self.cfg.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits on the device the images came from (onnxruntime's CPU provider runs on the CPU)."""
        device = x.device
        x = x.detach().float().cpu().contiguous()
        if self.parts > 1 and len(x) > 1:
            slices = x.tensor_split(min(self.parts, len(x)))
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.parts - 1, thread_name_prefix="vitkit-onnx")
            rest = [self._pool.submit(self._run, s) for s in slices[1:]]
            return torch.cat([self._run(slices[0])] + [f.result() for f in rest]).to(device)
        return self._run(x).to(device)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": x.contiguous().numpy()})[0])
