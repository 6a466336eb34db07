"""Named models, timm-style: `vit_{size}_patch{P}_{res}` as in the paper's Table 1 and AugReg,
the hybrids, the CNN baseline, and small presets for MNIST-size and 8x8 inputs."""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

from ..errors import VitkitError, unknown
from .config import ResNetConfig, ViTConfig
from .resnet import ResNet
from .vit import VisionTransformer

# Table 1 of the paper: (hidden size D, layers L, heads, MLP size).
SIZES = {
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 16, 5120),
}

_REGISTRY: dict[str, ViTConfig | ResNetConfig] = {}


def register(name: str, cfg: ViTConfig | ResNetConfig) -> None:
    _REGISTRY[name] = cfg


def _vit(size: str, **kw: Any) -> ViTConfig:
    d, depth, heads, mlp = SIZES[size]
    return ViTConfig(embed_dim=d, depth=depth, num_heads=heads, mlp_dim=mlp, **kw)


# Paper and AugReg models: size -> {patch: resolutions}.
for _size, _patches in {
    "tiny": {16: (224, 384)},
    "small": {8: (224,), 16: (224, 384), 32: (224, 384)},
    "base": {8: (224,), 16: (224, 384), 32: (224, 384)},
    "large": {16: (224, 384), 32: (224, 384)},
    "huge": {14: (224,)},
}.items():
    for _p, _resolutions in _patches.items():
        for _r in _resolutions:
            register(f"vit_{_size}_patch{_p}_{_r}", _vit(_size, patch_size=_p, img_size=_r))

# Hybrids (section 3.1): ResNet stages, then 1x1 patches of the feature map.
for _r in (224, 384):
    register(f"vit_base_r50_s16_{_r}", _vit("base", img_size=_r, patch_size=1, resnet_layers=(3, 4, 9)))
    register(f"vit_small_r26_s32_{_r}", _vit("small", img_size=_r, patch_size=1, resnet_layers=(2, 2, 2, 2)))
    register(f"vit_large_r50_s32_{_r}", _vit("large", img_size=_r, patch_size=1, resnet_layers=(3, 4, 6, 3)))

# Small presets: MNIST-size grayscale (28x28) and scikit-learn's 8x8 digits.
_small = dict(in_chans=1, num_classes=10)
register("vit_digits_patch4_8", ViTConfig(img_size=8, patch_size=4, embed_dim=96, depth=4, num_heads=4, mlp_dim=192,
                                          **_small))
register("vit_mnist_patch4_28", ViTConfig(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_dim=256,
                                          **_small))
register("vit_mnist_patch7_28", ViTConfig(img_size=28, patch_size=7, embed_dim=128, depth=6, num_heads=4, mlp_dim=256,
                                          **_small))
register("vit_mnist_r_28", ViTConfig(img_size=28, patch_size=1, embed_dim=128, depth=4, num_heads=4, mlp_dim=256,
                                     resnet_layers=(2,), resnet_width=32, **_small))

# The CNN baseline (BiT-style ResNet with a pooling head).
register("resnet_bit_50", ResNetConfig(img_size=224, layers=(3, 4, 6, 3)))
register("resnet_bit_26", ResNetConfig(img_size=224, layers=(2, 2, 2, 2)))
register("resnet_bit_mnist", ResNetConfig(img_size=28, layers=(2, 2), width=32, **_small))


def list_models(filter: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern (`*patch16*`)."""
    pattern = filter if any(c in filter for c in "*?[") else f"*{filter}*"
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_config(name: str, **overrides: Any) -> ViTConfig | ResNetConfig:
    """The configuration of a registered model with `overrides` applied (unknown fields are an error)."""
    if name not in _REGISTRY:
        raise unknown("model", name, _REGISTRY)
    return _REGISTRY[name].replace(**overrides)


def build_model(cfg: ViTConfig | ResNetConfig) -> nn.Module:
    return VisionTransformer(cfg) if isinstance(cfg, ViTConfig) else ResNet(cfg)


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a registered model, for example `create_model("vit_base_patch16_224", num_classes=10)`."""
    if pretrained:
        raise VitkitError("create_model(pretrained=True) is not available: load weights with "
                          "vitkit.load_model(path) once the interop issue lands")
    return build_model(model_config(name, **overrides))


def count_params(cfg: ViTConfig | ResNetConfig) -> int:
    """Parameter count without allocating memory (the model is built on the meta device)."""
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())
