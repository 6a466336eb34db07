"""Hugging Face `transformers` ViT checkpoints <-> vitkit: the v4 key names (files on the Hub) and the
v5 module names, and a config.json that transformers loads."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..errors import VitkitError
from ..models.config import ViTConfig

Tensors = dict[str, Tensor]

# per-layer names: vitkit suffix -> (v4 suffix, v5 suffix); q/k/v are handled together.
_LAYER = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp.fc2": ("output.dense", "mlp.fc2"),
}
_QKV = {"v4": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        "v5": ("attention.q_proj", "attention.k_proj", "attention.v_proj")}
_LAYER_PREFIX = {"v4": "vit.encoder.layer.", "v5": "vit.layers."}


def is_hf(sd: Tensors) -> bool:
    return any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings")) for k in sd)


def hf_to_vitkit(sd: Tensors) -> Tensors:
    sd = {k if k.startswith(("vit.", "classifier.")) else "vit." + k: v for k, v in sd.items()}
    version = "v5" if any(k.startswith("vit.layers.") for k in sd) else "v4"
    pre = _LAYER_PREFIX[version]
    out: Tensors = {
        "cls_token": sd["vit.embeddings.cls_token"],
        "pos_embed": sd["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["vit.layernorm.weight"],
        "norm.bias": sd["vit.layernorm.bias"],
    }
    depth = len({m.group(1) for k in sd if (m := re.match(re.escape(pre) + r"(\d+)\.", k))})
    for i in range(depth):
        p = f"{pre}{i}."
        for ours, names in _LAYER.items():
            idx = 0 if version == "v4" else 1
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{kind}"] = sd[f"{p}{names[idx]}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[f"{p}{n}.{kind}"] for n in _QKV[version]], dim=0)
    if "vit.pooler.dense.weight" in sd:  # ViTModel's pooler is the paper's tanh representation layer
        out["pre_logits.fc.weight"], out["pre_logits.fc.bias"] = sd["vit.pooler.dense.weight"], sd["vit.pooler.dense.bias"]
    if "classifier.weight" in sd:
        out["head.weight"], out["head.bias"] = sd["classifier.weight"], sd["classifier.bias"]
    return out  # a ViTForMaskedImageModeling mask token, if any, is not part of the classifier


def vitkit_to_hf(sd: Tensors, version: str = "v4") -> Tensors:
    if "cls_token" not in sd or "pos_embed" not in sd or any(k.startswith("patch_embed.backbone") for k in sd):
        raise VitkitError("Hugging Face ViT supports only class-token models with learned 1D positions and no "
                          "ResNet stem; export this model as timm, npz or vitkit instead")
    pre = _LAYER_PREFIX[version]
    out: Tensors = {
        "vit.embeddings.cls_token": sd["cls_token"],
        "vit.embeddings.position_embeddings": sd["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "vit.layernorm.weight": sd["norm.weight"],
        "vit.layernorm.bias": sd["norm.bias"],
    }
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"{pre}{i}."
        for ours, names in _LAYER.items():
            for kind in ("weight", "bias"):
                out[f"{p}{names[0 if version == 'v4' else 1]}.{kind}"] = sd[f"blocks.{i}.{ours}.{kind}"]
        for kind in ("weight", "bias"):
            for n, t in zip(_QKV[version], sd[f"blocks.{i}.attn.qkv.{kind}"].chunk(3, 0)):
                out[f"{p}{n}.{kind}"] = t.contiguous()
        i += 1
    if "pre_logits.fc.weight" in sd:
        raise VitkitError("Hugging Face's image classifier has no representation (pre-logits) layer; "
                          "drop it first (fine-tuning does) or export as npz/timm")
    if "head.weight" in sd:
        out["classifier.weight"], out["classifier.bias"] = sd["head.weight"], sd["head.bias"]
    return out


def hf_config(cfg: ViTConfig, classes: list[str] | None = None) -> dict:
    """config.json for transformers' ViTForImageClassification (LayerNorm eps 1e-6, not HF's 1e-12)."""
    if cfg.img_size[0] != cfg.img_size[1]:
        raise VitkitError("Hugging Face ViT configs describe square images only")
    names = classes or [str(i) for i in range(cfg.num_classes)]
    return {
        "architectures": ["ViTForImageClassification"], "model_type": "vit",
        "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim, "image_size": cfg.img_size[0], "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans, "layer_norm_eps": cfg.norm_eps, "qkv_bias": cfg.qkv_bias,
        "hidden_act": "gelu_pytorch_tanh" if cfg.act == "gelu_tanh" else "gelu",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
    }


def config_overrides(hf: dict) -> dict:
    """vitkit model fields from a transformers config.json."""
    act = hf.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_pytorch_tanh", "gelu_new"):
        raise VitkitError(f"config.json: hidden_act '{act}' is not supported (gelu, gelu_pytorch_tanh, gelu_new)")
    return {"num_heads": int(hf["num_attention_heads"]), "norm_eps": float(hf.get("layer_norm_eps", 1e-12)),
            "act": "gelu" if act == "gelu" else "gelu_tanh", "qkv_bias": bool(hf.get("qkv_bias", True))}
