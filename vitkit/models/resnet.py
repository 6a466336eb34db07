"""BiT-style ResNet as the official ViT code builds it: the hybrid's stem (paper section 3.1) and,
with a pooling head, the CNN baseline of the data-size study.

Weight-standardised convolutions, GroupNorm (32 groups), TensorFlow "SAME" padding, bottleneck
units with the last GroupNorm's scale initialised to zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import ResNetConfig, resnet_stride


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME": output ceil(size / stride), the extra pixel of odd padding at the end.
    Integer arithmetic only, so that a traced (ONNX) graph keeps computing it from the input's size."""
    total = max(((size + stride - 1) // stride - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int, value: float = 0.0) -> Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class StdConv2dSame(nn.Conv2d):
    """Convolution whose kernel is standardised (zero mean, unit std per output channel) on every call."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, eps: float = 1e-5):
        super().__init__(in_chans, out_chans, kernel_size, stride=stride, padding=0, bias=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + self.eps)
        x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, w, None, self.stride)


def zero_head(features: int, num_classes: int) -> nn.Module:
    """A zero-initialised linear classifier (paper B.1.1); Identity when there are no classes."""
    if not num_classes:
        return nn.Identity()
    head = nn.Linear(features, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def group_norm(chans: int) -> nn.GroupNorm:
    """BiT's 32 groups; widths that 32 does not divide (any multiple of 8 is allowed) get gcd(32, chans)."""
    return nn.GroupNorm(math.gcd(32, chans), chans, eps=1e-6)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion; projection shortcut when the shape changes."""

    def __init__(self, in_chans: int, width: int, stride: int = 1):
        super().__init__()
        out_chans = width * 4
        self.downsample = None
        if in_chans != out_chans or stride != 1:
            self.downsample = nn.Sequential()
            self.downsample.add_module("conv", StdConv2dSame(in_chans, out_chans, 1, stride))
            self.downsample.add_module("norm", group_norm(out_chans))
        self.conv1, self.norm1 = StdConv2dSame(in_chans, width, 1), group_norm(width)
        self.conv2, self.norm2 = StdConv2dSame(width, width, 3, stride), group_norm(width)
        self.conv3, self.norm3 = StdConv2dSame(width, out_chans, 1), group_norm(out_chans)
        nn.init.zeros_(self.norm3.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(shortcut + y)


class Stage(nn.Module):
    def __init__(self, in_chans: int, width: int, depth: int, stride: int):
        super().__init__()
        self.blocks = nn.Sequential(*[Bottleneck(in_chans if i == 0 else width * 4, width, stride if i == 0 else 1)
                                      for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class Stem(nn.Module):
    """7x7/2 weight-standardised conv, GroupNorm, ReLU, 3x3/2 max-pool ("SAME"): stride 4.

    Without the pool (stride 2) a 28-pixel digit still reaches the stages at 14x14 instead of 7x7.
    """

    def __init__(self, in_chans: int, width: int, pool: bool = True):
        super().__init__()
        self.conv = StdConv2dSame(in_chans, width, 7, 2)
        self.norm = group_norm(width)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm(self.conv(x)))
        return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2) if self.pool else x


class ResNetFeatures(nn.Module):
    """The ResNet body: stem, then stages of bottlenecks; the first stage keeps the resolution."""

    def __init__(self, layers: tuple[int, ...], in_chans: int = 3, width: int = 64, stem_pool: bool = True):
        super().__init__()
        self.stem = Stem(in_chans, width, stem_pool)
        stages, chans = [], width
        for i, depth in enumerate(layers):
            stages.append(Stage(chans, width * 2 ** i, depth, 1 if i == 0 else 2))
            chans = width * 2 ** i * 4
        self.stages = nn.Sequential(*stages)
        self.num_features = chans
        self.stride = resnet_stride(layers, stem_pool)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
            x = checkpoint(stage, x, use_reentrant=False) if use_ckpt else stage(x)
        return x


class ResNet(nn.Module):
    """The CNN baseline: ResNet body, global average pool, linear head (zero-initialised, as in BiT)."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        num_classes = self.num_classes = cfg.num_classes
        self.features = ResNetFeatures(cfg.layers, cfg.in_chans, cfg.width, cfg.stem_pool)
        self.num_features = self.features.num_features
        self.reset_classifier(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of keeping them."""
        self.features.grad_checkpointing = enable

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.cfg = self.cfg.replace(num_classes=num_classes)
        self.num_classes = num_classes
        self.head = zero_head(self.num_features, num_classes)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()
