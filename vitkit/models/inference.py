"""The inference path `vitkit eval`, `predict` and the benchmarks use: evaluation mode, no autograd
bookkeeping, and optionally a compiled graph with frozen weights.

Freezing lets the compiler treat the weights as constants: on CPU it pre-packs the linear layers for
oneDNN and fuses bias, GELU, LayerNorm and the residual additions into the surrounding kernels. The
first call per input shape pays the compilation (10-30 s on 2 cores), so it pays on a test set, not on
three images.
"""

from __future__ import annotations

from torch import nn

from .compiled import compiled
from .resnet import ResNet
from .vit import VisionTransformer


def inference_model(model: nn.Module, compile: bool = False) -> nn.Module:
    """`model` ready for inference: eval mode, gradients off, optionally compiled with frozen weights.

    Call it under `torch.inference_mode()`; the returned module shares the weights with `model`.
    """
    model.eval().requires_grad_(False)
    if not compile or not isinstance(model, (VisionTransformer, ResNet)):  # an onnxruntime model runs as is
        return model
    return compiled(model, freeze=True)
