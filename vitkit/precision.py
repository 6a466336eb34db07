"""Which precision a model computes in, chosen by what the hardware computes natively.

    auto -> bf16  on a CPU with AMX-BF16 or AVX512-BF16 (Intel from Sapphire Rapids, AMD from Zen 4),
                  and on a CUDA GPU with native bf16 (compute capability 8.0 and up)
    auto -> fp32  everywhere else: there bf16 is emulated (training ran 4.5x slower than fp32 on an
                  AVX2-only AMD EPYC, docs/training.md)
    fp16          only when asked for (on CUDA with loss scaling; on most CPUs emulated)

Training keeps fp32 master weights and optimizer state and computes in the chosen precision under
autocast; inference converts the weights. `VITKIT_AUTO_PRECISION=fp32` pins what `auto` means (tests
that compare exact values set it, so they pass on every kind of machine).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import VitkitError, unknown

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PIN_ENV = "VITKIT_AUTO_PRECISION"


def decide(requested: str, device_type: str, cpu_bf16: bool, gpu_bf16: bool) -> tuple[str, str]:
    """(precision, why) for a device with the given capabilities: the rule above, as a pure function."""
    if requested not in PRECISIONS:
        raise unknown("precision", requested, PRECISIONS)
    if requested != "auto":
        return requested, "as asked"
    pinned = os.environ.get(PIN_ENV, "")
    if pinned:
        if pinned not in DTYPES:
            raise VitkitError(f"{PIN_ENV}={pinned!r}: expected one of fp32, bf16, fp16")
        return pinned, f"auto, pinned by {PIN_ENV}"
    if device_type == "cuda":
        return ("bf16", "auto: this GPU computes bf16 natively") if gpu_bf16 else \
            ("fp32", "auto: this GPU has no native bf16")
    if device_type == "cpu":
        return ("bf16", "auto: this CPU has AMX-BF16/AVX512-BF16") if cpu_bf16 else \
            ("fp32", "auto: this CPU has no native bf16 (AMX-BF16/AVX512-BF16); emulated bf16 is slower")
    return "fp32", f"auto: fp32 on {device_type}"


def choose(requested: str, device: torch.device) -> tuple[str, str]:
    """`decide` for this machine's `device`."""
    from .machine import native_bf16_cpu

    cpu_bf16 = device.type == "cpu" and requested == "auto" and native_bf16_cpu()
    gpu_bf16 = device.type == "cuda" and requested == "auto" and torch.cuda.is_bf16_supported()
    return decide(requested, device.type, cpu_bf16, gpu_bf16)


def in_precision(model: nn.Module, precision: str) -> nn.Module:
    """`model` with its weights in `precision` and its float inputs cast to it (inference only)."""
    dtype = DTYPES[precision]
    if dtype is None:
        return model
    if not any(p.is_floating_point() for p in model.parameters()):
        raise VitkitError(f"--precision {precision}: this model has no PyTorch weights to convert (an exported "
                          f"file runs in the precision it was written in)")
    model = model.to(dtype)
    entry = getattr(model, "patch_embed", model)  # where images enter a ViT, also when called on its own
    entry.register_forward_pre_hook(lambda m, args: tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point()
                                                          else a for a in args))
    return model
