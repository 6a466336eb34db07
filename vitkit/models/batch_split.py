"""Batch-split threading: the slices of a batch run in parallel Python threads, one intra-op thread each.

Why: on a small model (the MNIST ViT) most of a forward pass is framework overhead between small
kernels, and two intra-op threads mostly wait on each other. Two Python threads, each running half of
the batch on one core, overlap one thread's Python with the other's kernels (the GIL is released
inside every operator): measured 1.1-1.2x for inference and 1.35x for a training step over two
intra-op threads on the whole batch (`benchmarks/batch_split_threads.py`).

Gradients: each slice's backward pass accumulates into the same `.grad` tensors (autograd locks
them per parameter); scaling each slice's mean loss by its share of the batch gives the gradient of
the whole batch's mean loss, equal up to float rounding.

Grad mode, inference mode and autocast are thread-local in PyTorch, so the caller's settings are
re-entered in the worker threads.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import Tensor, nn

from .vit import DropPath

T = TypeVar("T")

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_busy = threading.local()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="vitkit-split")
        return _pools[workers]


# Largest model (parameters) split by default; measured by benchmarks/batch_split_threads.py.
SPLIT_MAX_PARAMS = 100_000_000


def default_parts() -> int:
    """One slice per intra-op thread the caller has (1 means: do not split)."""
    return max(1, torch.get_num_threads())


def split_pays(model: nn.Module) -> bool:
    """Whether splitting measured faster for a model like this one: on CPU, with 2+ threads, up to
    SPLIT_MAX_PARAMS parameters."""
    params = list(model.parameters())
    return (default_parts() > 1 and all(p.device.type == "cpu" for p in params)
            and sum(p.numel() for p in params) <= SPLIT_MAX_PARAMS)


def _thread_state() -> Callable[[], contextlib.ExitStack]:
    """A factory of context managers that re-create the caller's grad, inference and autocast modes."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]

    def enter() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode() if inference else torch.set_grad_enabled(grad))
        for device, dtype in autocast:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        return stack
    return enter


def map_slices(fn: Callable[[Any], T], slices: Sequence[Any]) -> list[T]:
    """`[fn(s) for s in slices]`, each in its own thread with one intra-op thread; the first runs in the
    calling thread. The caller's intra-op thread count is restored afterwards."""
    if len(slices) <= 1 or getattr(_busy, "active", False):   # nested calls run in line
        return [fn(s) for s in slices]
    enter, threads = _thread_state(), torch.get_num_threads()

    def run(s: Any) -> T:
        torch.set_num_threads(1)
        _busy.active = True
        try:
            with enter():
                return fn(s)
        finally:
            _busy.active = False

    torch.set_num_threads(1)
    try:
        futures = [_pool(len(slices) - 1).submit(run, s) for s in slices[1:]]
        first = run(slices[0])
        return [first] + [f.result() for f in futures]
    finally:
        torch.set_num_threads(threads)


def split_rows(x: Tensor, parts: int) -> list[Tensor]:
    """`x` cut along the batch dimension into at most `parts` slices, none empty."""
    return list(x.tensor_split(min(parts, len(x))))


def has_random_layers(model: nn.Module) -> bool:
    """Whether a training forward pass draws random numbers (dropout, stochastic depth). Those draw from
    one global generator, so with threads the draws' order would follow thread timing, and a run would
    no longer be reproducible: such models are not split in training."""
    return any(isinstance(m, (nn.modules.dropout._DropoutNd, DropPath)) and m.p > 0 for m in model.modules())


class SplitBatch(nn.Module):
    """Inference wrapper: a batch of two or more images is cut into `parts` slices run in parallel threads."""

    def __init__(self, model: nn.Module, parts: int | None = None):
        super().__init__()
        self.model = model
        self.parts = parts or default_parts()

    def __getattr__(self, name: str) -> Any:   # the wrapped model's attributes (num_classes, cfg, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)

    def forward(self, x: Tensor) -> Tensor:
        if self.parts < 2 or len(x) < 2:
            return self.model(x)
        return torch.cat(map_slices(self.model, split_rows(x, self.parts)))


def split_backward(forward: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], params: Sequence[nn.Parameter],
                   x: Tensor, target: Tensor, parts: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Forward and backward of a batch's mean loss, its slices in parallel threads.

    `forward(x_slice, target_slice)` returns (logits, mean loss) of a slice. Each slice's gradient,
    weighted by its share of the batch and by `scale`, is computed in its thread; the main thread adds
    them to `.grad` in slice order, so the result does not depend on which thread finishes first (a run
    stays reproducible). Returns the batch's mean loss and logits. If a slice's loss is not finite, no
    gradient is added (the caller sees the non-finite loss and skips the step)."""
    n = len(x)

    def run(s: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Sequence[Tensor | None] | None]:
        logits, loss = forward(*s)
        share = len(s[0]) / n
        grads = (torch.autograd.grad(loss * (share * scale), params, allow_unused=True)
                 if torch.isfinite(loss) else None)
        return loss.detach() * share, logits.detach(), grads

    outs = map_slices(run, list(zip(split_rows(x, parts), split_rows(target, parts))))
    loss = torch.stack([o[0] for o in outs]).sum()
    if all(o[2] is not None for o in outs):
        with torch.no_grad():
            for i, p in enumerate(params):
                for o in outs:
                    g = o[2][i]
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad.add_(g)
    return loss, torch.cat([o[1] for o in outs])
