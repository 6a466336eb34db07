"""The model configuration: every architectural choice of the paper as one dataclass field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import VitkitError, unknown

POOLS = ("token", "avg")
POS_EMBEDS = ("learn", "learn2d", "sincos", "rel", "none")
ACTS = ("gelu", "gelu_tanh")
RESAMPLE_MODES = ("official", "bilinear", "bicubic")


def to_pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise VitkitError(f"expected one size or a (height, width) pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class ConfigBase:
    """Overrides by name with a clear error for unknown names, and plain-dict round trips."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **overrides: Any):
        """A copy with `overrides` applied; an unknown field is an error that names it."""
        names = self.field_names()
        for k in overrides:
            if k not in names:
                raise unknown("model field", k, names)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in
                ((k, getattr(self, k)) for k in self.field_names())}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls().replace(**d)


def resnet_stride(layers: tuple[int, ...], stem_pool: bool = True) -> int:
    """Input pixels per output cell of a BiT ResNet body: stem conv /2, max-pool /2, then /2 per later stage."""
    return (4 if stem_pool else 2) * 2 ** max(len(layers) - 1, 0)


@dataclass
class ViTConfig(ConfigBase):
    """A Vision Transformer (ViT-{size}/{patch}) or, with `resnet_layers`, the hybrid of section 3.1.

    Sizes follow the paper's Table 1: `embed_dim` is D, `depth` is L, `mlp_dim` the MLP size.
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    global_pool: str = "token"
    pos_embed: str = "learn"
    representation_size: int | None = None
    act: str = "gelu"
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    fc_norm: bool = False            # LayerNorm after pooling instead of before (timm's avg-pool models)
    resample: str = "bicubic"
    resample_antialias: bool = False
    # Hybrid: BiT ResNet stages in front of the transformer (None: plain ViT; () root only).
    resnet_layers: tuple[int, ...] | None = None
    resnet_width: int = 64
    resnet_stem_pool: bool = True    # False: no stem max-pool (stride 2, not 4), for very small images

    def __post_init__(self) -> None:
        self.img_size = to_pair(self.img_size)
        if self.resnet_layers is not None:
            self.resnet_layers = tuple(int(n) for n in self.resnet_layers)
        self.validate()

    @property
    def backbone_stride(self) -> int:
        """Input pixels per feature-map cell of the hybrid's ResNet (1 for a plain ViT)."""
        if self.resnet_layers is None:
            return 1
        return resnet_stride(self.resnet_layers, self.resnet_stem_pool)

    @property
    def pixels_per_token(self) -> int:
        return self.backbone_stride * self.patch_size

    def grid_size(self, img_size: tuple[int, int] | None = None) -> tuple[int, int]:
        h, w = img_size or self.img_size
        s = self.pixels_per_token
        if self.resnet_layers is not None:  # "SAME" convolutions round up, then patches must tile
            fh, fw = -(-h // self.backbone_stride), -(-w // self.backbone_stride)
            return fh // self.patch_size, fw // self.patch_size
        return h // s, w // s

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.global_pool == "token" else 0

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise VitkitError(msg)

        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_dim"):
            need(int(getattr(self, name)) > 0, f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}")
        need(min(self.img_size) > 0, f"img_size must be positive, got {self.img_size}")
        for k, valid in (("global_pool", POOLS), ("pos_embed", POS_EMBEDS), ("act", ACTS), ("resample", RESAMPLE_MODES)):
            if getattr(self, k) not in valid:
                raise unknown(k, str(getattr(self, k)), valid)
        need(self.embed_dim % self.num_heads == 0,
             f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        need(self.pos_embed != "learn2d" or self.embed_dim % 2 == 0,
             f"pos_embed 'learn2d' needs an even embed_dim, got {self.embed_dim}")
        need(self.pos_embed != "sincos" or self.embed_dim % 4 == 0,
             f"pos_embed 'sincos' needs embed_dim divisible by 4, got {self.embed_dim}")
        for k in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            v = getattr(self, k)
            need(0.0 <= v < 1.0, f"{k} must be in [0, 1), got {v}")
        need(self.representation_size is None or self.representation_size > 0,
             f"representation_size must be positive or None, got {self.representation_size}")
        if self.resnet_layers is None:
            h, w = self.img_size
            need(h % self.patch_size == 0 and w % self.patch_size == 0,
                 f"patch_size {self.patch_size} does not divide img_size {h}x{w}")
        else:
            need(self.resnet_width % 8 == 0, f"resnet_width must be a multiple of 8, got {self.resnet_width}")
            gh, gw = self.grid_size()
            need(gh > 0 and gw > 0, f"img_size {self.img_size} is too small for the hybrid's stride "
                                    f"{self.pixels_per_token}")


@dataclass
class ResNetConfig(ConfigBase):
    """The BiT-style CNN baseline: ResNet stages (bottleneck counts), global average pool, linear head."""

    img_size: int | tuple[int, int] = 224
    in_chans: int = 3
    num_classes: int = 1000
    layers: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    stem_pool: bool = True

    def __post_init__(self) -> None:
        self.img_size = to_pair(self.img_size)
        self.layers = tuple(int(n) for n in self.layers)
        if not self.layers or min(self.layers) < 1:
            raise VitkitError(f"layers must be one or more positive block counts, got {self.layers}")
        if self.width % 8 or self.width <= 0:
            raise VitkitError(f"width must be a positive multiple of 8, got {self.width}")
        if self.in_chans <= 0 or self.num_classes < 0:
            raise VitkitError(f"in_chans must be positive and num_classes >= 0, got {self.in_chans}, {self.num_classes}")
