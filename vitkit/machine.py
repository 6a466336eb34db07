"""What this machine is, as far as vitkit's speed choices depend on it: the CPU and the instruction sets
that decide which precisions it computes natively, the GPU if any, and the library versions.

The same description goes into `vitkit env`, every benchmark result, each training run's summary.json
and every exported file's metadata, so a figure always names the machine it came from.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import torch

# /proc/cpuinfo flag -> what it means for vitkit
ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI (int8 dot products)",
    "avx_vnni": "AVX-VNNI (int8 dot products, 256-bit)",
    "avx512_bf16": "AVX512-BF16 (bf16 dot products)",
    "avx512_fp16": "AVX512-FP16",
    "amx_tile": "AMX tiles",
    "amx_bf16": "AMX-BF16 (bf16 matrix products)",
    "amx_int8": "AMX-INT8 (int8 matrix products)",
    "amx_fp16": "AMX-FP16",
}


def _cpuinfo() -> tuple[str, set[str]]:
    path = Path("/proc/cpuinfo")
    if not path.exists():  # not Linux: the model name is all the platform tells
        return platform.processor() or platform.machine(), set()
    text = path.read_text(errors="replace")
    name, flags = "?", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "?":
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags


def l2_cache_bytes(default: int = 1 << 20) -> int:
    """Size of one core's level-2 cache (Linux sysfs), else `default`."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
        except (OSError, ValueError):
            continue
    return default


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe() -> dict[str, Any]:
    """The machine, as a JSON-ready dict."""
    name, flags = _cpuinfo()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_gb": round(p.total_memory / 2 ** 30, 1),
                         "capability": f"{p.major}.{p.minor}", "bf16": p.major >= 8})
    return {
        "cpu": name,
        "isa": sorted(f for f in ISA_FLAGS if f in flags),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("torch", "onnxruntime", "openvino")},
    }


def native_bf16_cpu(info: dict[str, Any] | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX-BF16 or AVX512-BF16)."""
    isa = set((info or describe())["isa"])
    return bool(isa & {"amx_bf16", "avx512_bf16"})


def format_description(info: dict[str, Any], choices: dict[str, str] | None = None) -> str:
    """`vitkit env`'s text."""
    lines = [f"CPU:       {info['cpu']} ({info['logical_cpus']} logical CPUs, torch uses {info['torch_threads']} "
             f"threads; torch's kernels: {info['torch_cpu_capability']})"]
    lines.append("ISA:       " + (", ".join(ISA_FLAGS[f] for f in info["isa"]) or "none of AVX2/AVX-512/VNNI/BF16/AMX"))
    missing = [ISA_FLAGS[f].split(" (")[0] for f in ("avx512_vnni", "avx512_bf16", "amx_bf16") if f not in info["isa"]]
    if missing:
        lines.append("           not present: " + ", ".join(missing))
    if info["gpus"]:
        for i, g in enumerate(info["gpus"]):
            lines.append(f"GPU {i}:     {g['name']}, {g['memory_gb']} GB, compute capability {g['capability']}"
                         f"{', bf16' if g['bf16'] else ''}")
    else:
        lines.append("GPU:       none visible to torch")
    v = info["versions"]
    lines.append(f"versions:  python {info['python']}, torch {v['torch']}, onnxruntime {v['onnxruntime'] or '-'}, "
                 f"openvino {v['openvino'] or '- (pip install openvino)'}")
    for what, choice in (choices or {}).items():
        lines.append(f"{what + ':':<10} {choice}")
    return "\n".join(lines)
