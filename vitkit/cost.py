"""What a ViT costs at a given resolution, in closed form: tokens, attention-matrix entries, FLOPs by
part, and the attention matrix's memory; plus a measured latency. Shows the paper's point that the
encoder's cost grows with the number of patches, the attention part quadratically.

FLOPs count a multiply-add of a matrix product or convolution as 2 (as fvcore and PyTorch's
FlopCounterMode do); normalisation, softmax, activations and bias additions are left out.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import VitkitError
from .models import ViTConfig, build_model, model_config
from .plotting import pyplot, save


@dataclass
class Cost:
    img_size: int
    tokens: int
    attn_entries: int        # h * T^2 per layer, summed over layers
    gflops_embed: float      # patch embedding
    gflops_attn: float       # qkv and output projections plus the two T x T products
    gflops_attn_matrix: float  # of which the T x T products (Q K^T and A V): the quadratic part
    gflops_mlp: float
    gflops_head: float
    gflops_total: float
    attn_matrix_mb: float    # one layer's attention probabilities per image, fp32, when materialised
    latency_ms: float | None = None  # measured, batch 1
    activation_mb: float | None = None  # measured: what autograd keeps for the backward pass of one image


def resnet_features_flops(layers: tuple[int, ...], in_chans: int, width: int, stem_pool: bool,
                          size: tuple[int, int]) -> tuple[int, tuple[int, int], int]:
    """Convolution FLOPs of the BiT ResNet body (`models/resnet.py`) on one image, its output map size and
    channels ("SAME" convolutions and pools output ceil(size / stride))."""
    def down(hw: tuple[int, int], stride: int) -> tuple[int, int]:
        return -(-hw[0] // stride), -(-hw[1] // stride)

    def conv(hw: tuple[int, int], cin: int, cout: int, k: int) -> int:
        return 2 * hw[0] * hw[1] * cout * cin * k * k

    hw = down(size, 2)
    flops = conv(hw, in_chans, width, 7)
    if stem_pool:
        hw = down(hw, 2)
    chans = width
    for i, depth in enumerate(layers):
        w = width * 2 ** i
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1
            out = down(hw, stride)
            flops += conv(hw, chans, w, 1) + conv(out, w, w, 3) + conv(out, w, 4 * w, 1)
            if chans != 4 * w or stride != 1:
                flops += conv(out, chans, 4 * w, 1)  # projection shortcut
            hw, chans = out, 4 * w
    return flops, hw, chans


def vit_cost(cfg: ViTConfig, img_size: int | None = None) -> Cost:
    """Forward cost of one image through `cfg` at `img_size` (default: the config's). For a hybrid the
    embedding part is the ResNet body plus the projection of its feature-map patches."""
    size = img_size or cfg.img_size[0]
    d, m, h, layers = cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.depth
    p = cfg.patch_size
    if cfg.resnet_layers is not None:
        embed, (fh, fw), in_chans = resnet_features_flops(cfg.resnet_layers, cfg.in_chans, cfg.resnet_width,
                                                          cfg.resnet_stem_pool, (size, size))
        where = f"img_size {size} gives a {fh}x{fw} feature map, which"
    else:
        embed, (fh, fw), where, in_chans = 0, (size, size), f"img_size {size}", cfg.in_chans
    if fh % p or fw % p:
        raise VitkitError(f"cost: {where} is not a multiple of patch_size {p}")
    n = (fh // p) * (fw // p)
    t = n + cfg.num_prefix_tokens
    embed += 2 * n * in_chans * p ** 2 * d
    attn_matrix = layers * 2 * (2 * t * t * d)            # Q K^T and A V, all heads together
    attn = layers * (2 * t * d * 3 * d + 2 * t * d * d) + attn_matrix
    mlp = layers * 2 * (2 * t * d * m)
    head = 2 * d * (cfg.representation_size or 0) + 2 * (cfg.representation_size or d) * cfg.num_classes
    g = 1e-9
    return Cost(size, t, layers * h * t * t, embed * g, attn * g, attn_matrix * g, mlp * g, head * g,
                (embed + attn + mlp + head) * g, h * t * t * 4 / 2 ** 20)


@torch.inference_mode()
def measure_latency(cfg: ViTConfig, img_size: int, repeats: int = 5) -> float:
    """Median milliseconds of one batch-1 forward on the CPU (after a warm-up)."""
    model = build_model(cfg.replace(img_size=img_size)).eval()
    x = torch.randn(1, cfg.in_chans, img_size, img_size)
    model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def measure_activation_mb(cfg: ViTConfig, img_size: int) -> float:
    """Megabytes of activations a training forward of one image keeps for its backward pass (fp32): the
    tensors autograd saves, each storage counted once, the parameters left out."""
    model = build_model(cfg.replace(img_size=img_size)).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(1, cfg.in_chans, img_size, img_size))
    return sum(seen.values()) / 2 ** 20


def cost_table(name: str, sizes: list[int], latency: bool = True) -> list[Cost]:
    cfg = model_config(name)
    if not isinstance(cfg, ViTConfig):
        raise VitkitError(f"cost: {name} is not a Vision Transformer")
    rows = []
    for size in sizes:
        c = vit_cost(cfg, size)
        if latency:
            c.latency_ms = measure_latency(cfg, size)
            c.activation_mb = measure_activation_mb(cfg, size)
        rows.append(c)
    return rows


def format_table(rows: list[Cost]) -> str:
    head = ("| img | tokens | attn entries | GFLOPs total | embed | attention (T×T part) | MLP | "
            "attn matrix MB/layer | activations MB (training) | latency ms |")
    lines = [head, "| " + " | ".join(["---"] * 10) + " |"]
    for c in rows:
        lat = f"{c.latency_ms:.1f}" if c.latency_ms is not None else "-"
        act = f"{c.activation_mb:.4g}" if c.activation_mb is not None else "-"
        lines.append(f"| {c.img_size} | {c.tokens:,} | {c.attn_entries:,} | {c.gflops_total:.3g} | {c.gflops_embed:.3g} "
                     f"| {c.gflops_attn:.3g} ({c.gflops_attn_matrix:.3g}) | {c.gflops_mlp:.3g} "
                     f"| {c.attn_matrix_mb:.3g} | {act} | {lat} |")
    return "\n".join(lines)


def plot_costs(rows: list[Cost], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [c.img_size for c in rows]
    for label, key in (("total", "gflops_total"), ("MLP", "gflops_mlp"), ("attention", "gflops_attn"),
                       ("attention T×T products", "gflops_attn_matrix"), ("patch embedding", "gflops_embed")):
        ax.plot(x, [getattr(c, key) for c in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("image size (pixels per side)")
    ax.set_ylabel("GFLOPs per image")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save(fig, path, dpi=120)


def to_dicts(rows: list[Cost]) -> list[dict]:
    return [asdict(c) for c in rows]
