"""The pictures: rollout overlays, per-head attention grids, and the three panels of the paper's Figure 7."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from ..plotting import pyplot, save

if TYPE_CHECKING:
    from PIL import Image


def overlay(image: np.ndarray, heat: Tensor, path: Path, alpha: float = 0.5) -> None:
    """Heat map resized to the image's original size and blended over it (PNG, same pixel size)."""
    overlay_image(image, heat, alpha).save(path)


def overlay_image(image: np.ndarray, heat: Tensor, alpha: float = 0.5) -> Image.Image:
    """`overlay` as a PIL image (the server sends it without touching the disk)."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = image.shape[:2]
    heat = F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    colour = colormaps["jet"](heat.clamp(0, 1).numpy())[..., :3]
    base = image.astype(np.float32) / 255.0
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    blend = (1 - alpha) * base + alpha * colour
    return Image.fromarray((blend * 255 + 0.5).astype(np.uint8))


def _tiles(images: list[tuple[np.ndarray, dict, str]], path: Path, title: str, max_cols: int, cell: float) -> None:
    """A grid of small images (array, imshow options, caption) with a title, saved as PNG."""
    plt = pyplot()
    n = len(images)
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            arr, opts, caption = images[i]
            ax.imshow(arr, **opts)
            if caption:
                ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def head_grid(maps: Tensor, path: Path, title: str) -> None:
    """(heads, H, W) attention maps as a row of small images."""
    _tiles([(m.numpy(), {"cmap": "viridis"}, f"head {i}") for i, m in enumerate(maps)], path, title, 8, 1.6)


def distance_scatter(dist: Tensor, path: Path, title: str) -> None:
    """The paper's Figure 7 (right): one dot per head, network depth on x, mean distance on y."""
    plt = pyplot()
    layers, heads = dist.shape
    fig, ax = plt.subplots(figsize=(5, 4))
    for h in range(heads):
        ax.scatter(np.arange(1, layers + 1), dist[:, h].numpy(), s=14, label=f"head {h}")
    ax.plot(np.arange(1, layers + 1), dist.mean(1).numpy(), "k--", lw=1, label="mean")
    ax.set(xlabel="network depth (layer)", ylabel="mean attention distance (pixels)", title=title)
    ax.grid(alpha=0.3)
    if heads <= 16:
        ax.legend(fontsize=6, ncol=2)
    save(fig, path)


def similarity_grid(sim: Tensor, path: Path, title: str) -> None:
    """Figure 7 (centre): for each position, its similarity map to all positions, laid out as the grid."""
    plt = pyplot()
    gh, gw = sim.shape[:2]
    fig, axes = plt.subplots(gh, gw, figsize=(0.6 * gw + 1, 0.6 * gh + 0.6), squeeze=False)
    for i in range(gh):
        for j in range(gw):
            ax = axes[i, j]
            ax.imshow(sim[i, j].numpy(), vmin=-1, vmax=1, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def filter_grid(components: Tensor, path: Path, title: str) -> None:
    """Figure 7 (left): principal components of the patch-embedding filters as image patches."""
    tiles = []
    for c in components:
        c = (c - c.min()) / (c.max() - c.min()).clamp_min(1e-12)
        tiles.append((c.permute(1, 2, 0).numpy(), {}, "") if c.shape[0] == 3 else (c[0].numpy(), {"cmap": "gray"}, ""))
    _tiles(tiles, path, title, 7, 1.2)
