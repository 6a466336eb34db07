"""The official JAX checkpoints (google-research/vision_transformer, AugReg, big_vision) <-> vitkit.

Flax stores dense kernels as (in, out), convolutions as (H, W, in, out), and attention projections
per head: query/key/value kernels (D, heads, head_dim) and the output kernel (heads, head_dim, D).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..errors import VitkitError

Tensors = dict[str, Tensor]


def normalise_keys(raw: Tensors) -> Tensors:
    """One spelling for the official, AugReg and big_vision layouts (prefixes, module numbering, scans)."""
    out: Tensors = {}
    for k, v in raw.items():
        k = k.replace("/", ".")
        for prefix in ("params.", "opt.target.", "img."):
            k = k.removeprefix(prefix)
        k = re.sub(r"MultiHeadDotProductAttention_\d", "attn", k)
        k = re.sub(r"MlpBlock_\d", "mlp", k)
        k = k.replace("Transformer.posembed_input.pos_embedding", "pos_embedding")
        k = k.replace("Transformer.", "")
        out[k] = v
    # big_vision names the two block LayerNorms LayerNorm_0/LayerNorm_1, the original code _0/_2.
    out = {re.sub(r"LayerNorm_2", "LayerNorm_1", k): v for k, v in out.items()}
    scanned = [k for k in out if k.startswith("encoderblock.")]
    if scanned:  # big_vision's scanned layers: one stacked array per parameter
        depth = out[scanned[0]].shape[0]
        for k in scanned:
            v = out.pop(k)
            for i in range(depth):
                out[k.replace("encoderblock.", f"encoderblock_{i}.", 1)] = v[i]
    return out


def _conv(k: Tensor) -> Tensor:
    return k.permute(3, 2, 0, 1).contiguous()


def npz_to_vitkit(raw: Tensors) -> tuple[Tensors, dict]:
    """Official arrays -> vitkit state dict, and what the arrays say about the architecture."""
    a = normalise_keys(raw)
    if "embedding.kernel" not in a:
        raise VitkitError("not an official ViT checkpoint: no 'embedding/kernel' array")
    sd: Tensors = {}
    info: dict = {}
    sd["patch_embed.proj.weight"] = _conv(a["embedding.kernel"])
    sd["patch_embed.proj.bias"] = a["embedding.bias"]
    if "cls" in a:
        sd["cls_token"] = a["cls"].reshape(1, 1, -1)
    if "pos_embedding" in a:
        sd["pos_embed"] = a["pos_embedding"].reshape(1, -1, a["pos_embedding"].shape[-1])
    depth = len({m.group(1) for k in a if (m := re.match(r"encoderblock_(\d+)\.", k))})
    for i in range(depth):
        b, t = f"encoderblock_{i}.", f"blocks.{i}."
        for src, dst in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
            sd[t + dst + ".weight"], sd[t + dst + ".bias"] = a[b + src + ".scale"], a[b + src + ".bias"]
        q, k, v = (a[f"{b}attn.{n}.kernel"] for n in ("query", "key", "value"))
        d, heads, hd = q.shape
        info["num_heads"] = heads
        sd[t + "attn.qkv.weight"] = torch.cat([w.reshape(d, heads * hd).T for w in (q, k, v)], dim=0)
        sd[t + "attn.qkv.bias"] = torch.cat([a[f"{b}attn.{n}.bias"].reshape(-1) for n in ("query", "key", "value")])
        sd[t + "attn.proj.weight"] = a[f"{b}attn.out.kernel"].reshape(heads * hd, d).T
        sd[t + "attn.proj.bias"] = a[f"{b}attn.out.bias"]
        for src, dst in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            sd[f"{t}mlp.{dst}.weight"] = a[f"{b}mlp.{src}.kernel"].T
            sd[f"{t}mlp.{dst}.bias"] = a[f"{b}mlp.{src}.bias"]
    sd["norm.weight"], sd["norm.bias"] = a["encoder_norm.scale"], a["encoder_norm.bias"]
    if "pre_logits.kernel" in a:
        sd["pre_logits.fc.weight"], sd["pre_logits.fc.bias"] = a["pre_logits.kernel"].T, a["pre_logits.bias"]
    if "head.kernel" in a:
        sd["head.weight"], sd["head.bias"] = a["head.kernel"].T, a["head.bias"]
    if "conv_root.kernel" in a:
        _resnet_to_vitkit(a, sd)
    leftovers = [k for k in a if k.startswith("MAPHead")]
    if leftovers:
        raise VitkitError("big_vision MAP-head pooling is not supported yet (keys " + ", ".join(leftovers[:2]) + ")")
    return sd, info


def _resnet_to_vitkit(a: Tensors, sd: Tensors) -> None:
    p = "patch_embed.backbone."
    sd[p + "stem.conv.weight"] = _conv(a["conv_root.kernel"])
    sd[p + "stem.norm.weight"], sd[p + "stem.norm.bias"] = a["gn_root.scale"], a["gn_root.bias"]
    for k in a:
        m = re.match(r"block(\d+)\.unit(\d+)\.(conv\d|conv_proj|gn\d|gn_proj)\.(kernel|scale|bias)$", k)
        if not m:
            continue
        stage, unit, layer, kind = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3), m.group(4)
        name = {"conv_proj": "downsample.conv", "gn_proj": "downsample.norm"}.get(
            layer, layer.replace("gn", "norm"))
        dst = f"{p}stages.{stage}.blocks.{unit}.{name}."
        sd[dst + ("weight" if kind in ("kernel", "scale") else "bias")] = _conv(a[k]) if kind == "kernel" else a[k]


def vitkit_to_npz(sd: Tensors, num_heads: int) -> dict[str, "torch.Tensor"]:
    """vitkit state dict -> arrays in the original ViT layout (the one the official code loads)."""
    out: Tensors = {}
    out["embedding/kernel"] = sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)
    out["embedding/bias"] = sd["patch_embed.proj.bias"]
    if "cls_token" in sd:
        out["cls"] = sd["cls_token"]
    if "pos_embed" in sd:
        out["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        for src, dst in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[b + src + "/scale"], out[b + src + "/bias"] = sd[t + dst + ".weight"], sd[t + dst + ".bias"]
        d = sd[t + "norm1.weight"].shape[0]
        hd = d // num_heads
        for n, w, bias in zip(("query", "key", "value"), sd[t + "attn.qkv.weight"].chunk(3, 0),
                              sd[t + "attn.qkv.bias"].chunk(3, 0)):
            out[f"{b}MultiHeadDotProductAttention_1/{n}/kernel"] = w.T.reshape(d, num_heads, hd)
            out[f"{b}MultiHeadDotProductAttention_1/{n}/bias"] = bias.reshape(num_heads, hd)
        out[f"{b}MultiHeadDotProductAttention_1/out/kernel"] = sd[t + "attn.proj.weight"].T.reshape(num_heads, hd, d)
        out[f"{b}MultiHeadDotProductAttention_1/out/bias"] = sd[t + "attn.proj.bias"]
        for src, dst in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            out[f"{b}MlpBlock_3/{src}/kernel"] = sd[f"{t}mlp.{dst}.weight"].T
            out[f"{b}MlpBlock_3/{src}/bias"] = sd[f"{t}mlp.{dst}.bias"]
        i += 1
    out["Transformer/encoder_norm/scale"], out["Transformer/encoder_norm/bias"] = sd["norm.weight"], sd["norm.bias"]
    if "pre_logits.fc.weight" in sd:
        out["pre_logits/kernel"], out["pre_logits/bias"] = sd["pre_logits.fc.weight"].T, sd["pre_logits.fc.bias"]
    if "head.weight" in sd:
        out["head/kernel"], out["head/bias"] = sd["head.weight"].T, sd["head.bias"]
    for k, v in sd.items():
        m = re.match(r"patch_embed\.backbone\.(.+)\.(weight|bias)$", k)
        if not m:
            continue
        path, kind = m.group(1), m.group(2)
        if path.startswith("stem."):
            name = "conv_root" if path == "stem.conv" else "gn_root"
        else:
            s = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", path)
            layer = {"downsample.conv": "conv_proj", "downsample.norm": "gn_proj"}.get(
                s.group(3), s.group(3).replace("norm", "gn"))
            name = f"block{int(s.group(1)) + 1}/unit{int(s.group(2)) + 1}/{layer}"
        is_conv = v.ndim == 4
        out[f"{name}/{'kernel' if is_conv else ('scale' if kind == 'weight' else 'bias')}"] = \
            v.permute(2, 3, 1, 0) if is_conv else v
    return {k: v.contiguous() for k, v in out.items()}
