"""An exported ONNX file (fp32 or int8) run by onnxruntime, behind the nn.Module interface."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import META_KEY, config_from_meta
from ..errors import VitkitError
from ..machine import l2_cache_bytes


def onnxruntime():
    """The onnxruntime module, or a one-line error that says how to get it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise VitkitError("ONNX files need onnxruntime and onnx: pip install 'vitkit[onnx]'") from None
    return ort


class OnnxModel(nn.Module):
    """An exported file run by onnxruntime, with the model config and metadata the file carries."""

    def __init__(self, path: str | Path, threads: int | None = None, split: bool = True,
                 run_images: int | None = None):
        """`split`: with 2+ threads, run slices of a batch concurrently, one intra-op thread each, instead
        of one run on all threads (7% faster on the int8 MNIST model at batch 32, benchmarks/int8.py:
        small matrices parallelise badly inside one operator, while a session runs concurrently
        without the GIL). `run_images`: at most this many images per session run (default
        `images_per_run`, from the cache size)."""
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
        self.run_images = run_images
        self._cache = l2_cache_bytes()

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
        n = self.run_images or images_per_run(self.cfg, tuple(x.shape[-2:]), self._cache) or len(x)
        outs = [self.session.run(None, {"images": x[i:i + n].contiguous().numpy()})[0] for i in range(0, len(x), n)]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))


def images_per_run(cfg: Any, img_size: tuple[int, int], cache_bytes: int) -> int | None:
    """How many images one onnxruntime run should take: as many as keep one token activation tensor
    ([images, tokens, D] in fp32) within a third of a core's L2 cache; None (the whole slice) for a CNN.

    Larger runs spill each layer's activations out of the cache. On the 2-core AMX Xeon (2 MiB L2,
    2026-12-07, docs/export.md) batch 32 ran, by images per run: int8 ViT-S/16 94 / 100 / 96 / 90 / 71 / 64
    img/s at 1 / 2 / 3 / 4 / 8 / 16, its fp32 file 31 / 32 / 31 / 31 / 28 / 26, int8 ViT-B/16 36 / 33 / 31 / 30 /
    28 / 27 (best at 1), the int8 MNIST model fastest at 16 (its activations are 8.7 KB an image). The
    rule gives 2, 1 and 80 there; on CPUs with a smaller L2 (Zen 3: 512 KiB) it gives fewer, unmeasured."""
    if not hasattr(cfg, "embed_dim") or not hasattr(cfg, "grid_size"):
        return None
    gh, gw = cfg.grid_size(img_size)
    return max(1, cache_bytes // 3 // ((gh * gw + 1) * cfg.embed_dim * 4))
