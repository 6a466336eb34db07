"""An exported ONNX file (fp32 or int8) run by onnxruntime, behind the nn.Module interface."""

from __future__ import annotations

import itertools
import json
import queue
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

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
        """`split`: with 2+ threads, run parts of a batch concurrently, one intra-op thread each, instead
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
        return self.run_pieces(iter([x.detach().float().cpu()]), len(x)).to(x.device)

    def run_pieces(self, pieces: Iterator[torch.Tensor], total: int) -> torch.Tensor:
        """Logits of the images `pieces` yields (about `total` in all), in order. The images go out in runs
        (`run_size`) to a queue that every thread of this model drains, the caller's too once `pieces` is
        exhausted: runs start on the other threads while the caller still produces pieces (a server
        decoding its requests: the second core no longer idles meanwhile), and a thread that the OS
        interrupts takes fewer runs instead of holding the others up at the end of a fixed slice."""
        first = next(pieces, None)
        if first is None:
            return torch.empty(0, self.num_classes)
        size = self.run_size(total, tuple(first.shape[-2:]))
        if self.parts == 1 or total <= size:  # the caller alone: no hand-over
            return self._run_all(torch.cat([first, *pieces]), size)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parts - 1, thread_name_prefix="vitkit-onnx")
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        outs: dict[int, np.ndarray] = {}
        helpers = [self._pool.submit(self._drain, jobs, outs) for _ in range(self.parts - 1)]
        count = 0
        try:
            for x in _runs(itertools.chain([first], pieces), size):
                jobs.put((count, x))
                count += 1
        finally:
            jobs.put(None)  # the end: every drainer passes it on and stops
        self._drain(jobs, outs)
        for h in helpers:
            h.result()
        if not count:  # pieces without images
            return torch.empty(0, self.num_classes)
        return torch.from_numpy(np.concatenate([outs[k] for k in range(count)]))

    def run_size(self, total: int, img_size: tuple[int, int]) -> int:
        """Images per session run for a batch of `total`: `run_images`, else what fits the cache
        (`images_per_run`), and never more than an equal share of the threads."""
        size = self.run_images or images_per_run(self.cfg, img_size, self._cache) or total
        return max(1, min(size, -(-total // self.parts)))

    def _run_all(self, x: torch.Tensor, size: int) -> torch.Tensor:
        outs = [self._session_run(x[i:i + size]) for i in range(0, len(x), size)]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))

    def _session_run(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"images": x.contiguous().numpy()})[0]

    def _drain(self, jobs: queue.SimpleQueue, outs: dict[int, np.ndarray]) -> None:
        while (job := jobs.get()) is not None:
            outs[job[0]] = self._session_run(job[1])
        jobs.put(None)


def _runs(pieces: Iterator[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """The images of `pieces`, regrouped into tensors of `size` (the last one may be smaller)."""
    held: list[torch.Tensor] = []
    count = 0
    for piece in pieces:
        while len(piece):
            take = piece[:size - count]
            held.append(take)
            count += len(take)
            piece = piece[len(take):]
            if count == size:
                yield held[0] if len(held) == 1 else torch.cat(held)
                held, count = [], 0
    if held:
        yield torch.cat(held)


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
