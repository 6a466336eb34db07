"""torch.compile as vitkit runs it: `--compile` of eval/predict (frozen weights) and `train.compile`.

The C++ wrapper calls the generated kernels from compiled code instead of a Python function, which is
what a small model's step is made of: measured round-robin on 2 cores against the default Python wrapper
(benchmarks/variants.py --study wrapper),
the MNIST model's inference runs 1.25x faster at batch 1 and 1.04x at batch 32, its training step
1.06x; ViT-S/16 at batch 1 1.01x; compile time unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def compiled(module: nn.Module, freeze: bool = False) -> nn.Module:
    """`module` compiled for fixed input shapes (a new batch size compiles once more). On a CPU, `freeze`
    treats the weights as constants, which lets the compiler pre-pack them for oneDNN (inference only),
    and the C++ wrapper calls the kernels; both were measured there, so a GPU keeps inductor's defaults."""
    param = next(module.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    options = {"cpp_wrapper": True, "freezing": freeze} if on_cpu else {}
    return torch.compile(module, dynamic=False, options=options)
