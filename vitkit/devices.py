"""The device a command runs on: validated once, set up once (TF32, determinism), and its random state
saved with the CPU's so that a resumed run on a GPU draws what an uninterrupted one would have."""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import VitkitError

DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `mps` as a torch.device, or a one-line error saying why it cannot be used."""
    text = str(name).strip()
    if text.lower() == "gpu":
        raise VitkitError("unknown device 'gpu': use cuda (or cuda:N for the N-th GPU)")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise VitkitError(f"unknown device '{text}' (cpu, cuda, cuda:N, mps)") from None
    if device.type not in DEVICE_TYPES:
        raise VitkitError(f"device '{text}' is not supported here (cpu, cuda, cuda:N, mps)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VitkitError(f"device '{text}' requested but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise VitkitError(f"device '{text}' does not exist: this machine has {count} GPU"
                              f"{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise VitkitError("device 'mps' requested but MPS is not available on this machine")
    return device


def configure(device: torch.device, deterministic: bool = False) -> None:
    """Process-wide settings for a run on `device`. On CUDA, TF32 matrix products (10-bit mantissa, the
    Ampere+ default of every framework's training) unless the run must be deterministic; a deterministic
    run also gets cuBLAS's fixed workspace and refuses non-deterministic kernels outright."""
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global generators a run draws from: the CPU's and, on CUDA, its GPU's (dropout, drop path)."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, Any] | torch.Tensor, device: torch.device) -> None:
    """Restore `rng_state`'s result on `device` (a bare tensor is an older checkpoint's CPU state)."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def loader_workers(configured: int, device: torch.device) -> int:
    """`data.num_workers`, with -1 resolved: none on a CPU (decoding would take cores from training), up
    to 4 beside a GPU (where decoding in the training process would leave the GPU waiting)."""
    if configured >= 0:
        return configured
    return min(4, max((os.cpu_count() or 1) - 1, 0)) if device.type == "cuda" else 0


def pin_memory(device: torch.device) -> bool:
    """Page-locked loader batches: copies to a GPU then run asynchronously (non_blocking=True)."""
    return device.type == "cuda"
