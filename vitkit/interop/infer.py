"""The architecture a state dict (in vitkit's names) implies: width, depth, patch, pooling, stem..."""

from __future__ import annotations

import math
import re

from torch import Tensor

from ..errors import VitkitError
from ..models.config import ViTConfig, resnet_stride
from ..models.registry import SIZES

HEADS_BY_WIDTH = {d: h for d, _, h, _ in SIZES.values()}


def infer_config(sd: dict[str, Tensor], **known) -> ViTConfig:
    """`known` fields (num_heads from a file's config, say) win over what the tensors suggest."""
    if "patch_embed.proj.weight" not in sd:
        raise VitkitError("not a ViT state dict: no patch embedding (patch_embed.proj.weight)")
    w = sd["patch_embed.proj.weight"]
    d, patch = w.shape[0], w.shape[-1]
    cfg: dict = {"embed_dim": d, "patch_size": patch}
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise VitkitError("not a ViT state dict: no transformer blocks (blocks.N.*)")
    cfg["depth"] = depth
    cfg["mlp_dim"] = sd["blocks.0.mlp.fc1.weight"].shape[0]
    cfg["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
    cfg["num_heads"] = HEADS_BY_WIDTH.get(d, d // 64 if d % 64 == 0 else 0)
    cfg["global_pool"] = "token" if "cls_token" in sd else "avg"
    cfg["fc_norm"] = "fc_norm.weight" in sd
    prefix = 1 if "cls_token" in sd else 0
    stride = 1
    if "patch_embed.backbone.stem.conv.weight" in sd:
        stem = sd["patch_embed.backbone.stem.conv.weight"]
        stages: dict[int, int] = {}
        for k in sd:
            m = re.match(r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.", k)
            if m:
                stages[int(m.group(1))] = max(stages.get(int(m.group(1)), 0), int(m.group(2)) + 1)
        cfg["resnet_layers"] = tuple(stages[i] for i in range(len(stages)))
        cfg["resnet_width"] = stem.shape[0]
        cfg["in_chans"] = stem.shape[1]
        stride = resnet_stride(cfg["resnet_layers"], known.get("resnet_stem_pool", True))
    else:
        cfg["in_chans"] = w.shape[1]
    if "pos_embed" in sd:
        n = sd["pos_embed"].shape[1] - prefix
        side = math.isqrt(n)
        if side * side != n:
            raise VitkitError(f"pos_embed has {n} patch positions, not a square grid; pass img_size")
        cfg["img_size"] = side * patch * stride
        cfg["pos_embed"] = "learn"
    else:
        cfg["pos_embed"] = "none"
        cfg["img_size"] = 224
    cfg["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    if "pre_logits.fc.weight" in sd:
        cfg["representation_size"] = sd["pre_logits.fc.weight"].shape[0]
    cfg.update(known)
    if not cfg["num_heads"]:
        raise VitkitError(f"cannot tell the number of heads of a width-{d} model from its tensors; pass num_heads=")
    return ViTConfig(**cfg)
