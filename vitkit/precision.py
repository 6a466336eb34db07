"""Which precision a model computes in, chosen by what the hardware computes natively.

    auto -> bf16  on a CPU with AMX-BF16 or AVX512-BF16 (Intel from Sapphire Rapids, AMD from Zen 4)
                  where bf16 matrix products also run faster than fp32 ones (a 0.1 s probe, once per
                  machine, cached; a Zen 4 EPYC measured 2.5x, and trained ViT-S/16 1.95x fp32), and
                  on a CUDA GPU with native bf16 (compute capability 8.0 and up)
    auto -> fp32  everywhere else: on an AVX2-only AMD EPYC bf16 is emulated (training 4.5x slower
                  than fp32), and on a Xeon with AVX512-BF16 but no AMX bf16 products ran at half
                  fp32's rate (docs/training.md): the flag alone does not make bf16 pay
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


BF16_PAYS = 1.1  # the probe's bf16 / fp32 speed ratio from which auto takes bf16 on a CPU
PROBE_SIZE, PROBE_ROUNDS = 768, 7


def decide(requested: str, device_type: str, cpu_bf16: bool, gpu_bf16: bool,
           cpu_bf16_speedup: float | None = None) -> tuple[str, str]:
    """(precision, why) for a device with the given capabilities: the rule above, as a pure function.
    `cpu_bf16_speedup`: the probe's bf16 / fp32 matrix-product speed on this CPU (None: not measured)."""
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
        if not cpu_bf16:
            return "fp32", "auto: this CPU has no native bf16 (AMX-BF16/AVX512-BF16); emulated bf16 is slower"
        if cpu_bf16_speedup is not None and cpu_bf16_speedup < BF16_PAYS:
            return "fp32", (f"auto: this CPU has native bf16, but its bf16 matrix products ran at "
                            f"{cpu_bf16_speedup:.2f}x fp32's speed here (probe)")
        measured = f" (bf16 matrix products {cpu_bf16_speedup:.2f}x fp32's here)" if cpu_bf16_speedup else ""
        return "bf16", f"auto: this CPU has AMX-BF16/AVX512-BF16{measured}"
    return "fp32", f"auto: fp32 on {device_type}"


def choose(requested: str, device: torch.device) -> tuple[str, str]:
    """`decide` for this machine's `device`."""
    from .machine import native_bf16_cpu

    cpu_bf16 = device.type == "cpu" and requested == "auto" and not os.environ.get(PIN_ENV) and native_bf16_cpu()
    gpu_bf16 = device.type == "cuda" and requested == "auto" and torch.cuda.is_bf16_supported()
    return decide(requested, device.type, cpu_bf16, gpu_bf16, cpu_bf16_speedup() if cpu_bf16 else None)


_speedup: dict[str, float] = {}


def _probe_key() -> str:
    from .machine import describe
    info = describe()
    return f"{info['cpu']}|{','.join(info['isa'])}|torch {info['versions']['torch']}|{torch.get_num_threads()} threads"


def measure_bf16_speedup(size: int = PROBE_SIZE, rounds: int = PROBE_ROUNDS) -> float:
    """bf16 / fp32 speed of a size^3 matrix product on this CPU: the median over `rounds` of the ratio
    of the best of three products in each precision, timed in turn after a warm-up of both (the thread
    pool and oneDNN's kernels start on first use; timing one precision first once read 1.2x for 0.6x)."""
    import statistics
    import time

    a32, b32 = torch.randn(size, size), torch.randn(size, size)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def best(a: torch.Tensor, b: torch.Tensor) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times)
    for _ in range(2):
        best(a32, b32), best(a16, b16)
    return statistics.median(best(a32, b32) / best(a16, b16) for _ in range(rounds))


def cpu_bf16_speedup() -> float:
    """`measure_bf16_speedup`, once per machine (CPU, instruction sets, torch, threads): kept in
    ~/.cache/vitkit/bf16_probe.json (XDG_CACHE_HOME respected) so commands start without it."""
    import json

    from .files import atomic_write_text, cache_dir

    key = _probe_key()
    if key in _speedup:
        return _speedup[key]
    cache = cache_dir() / "bf16_probe.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict) or not isinstance(known.get(key), (int, float)):
        known = known if isinstance(known, dict) else {}
        known[key] = round(measure_bf16_speedup(), 3)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, json.dumps(known, indent=1))
        except OSError:
            pass  # a read-only home: measure again next time
    _speedup[key] = float(known[key])
    return _speedup[key]


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
