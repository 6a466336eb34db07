"""Position information (paper eq. 1, E_pos, and appendix D.4): the tables and their 2D resampling.

Absolute embeddings live in the model as parameters with timm's names; this module holds the
maths that builds, resamples and (for the relative variant) applies them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitkitError


def _interpolate(grid: Tensor, size: tuple[int, int], mode: str, antialias: bool) -> Tensor:
    """Resize a (N, C, H, W) table. `official` is bilinear with corners aligned: it equals
    scipy.ndimage.zoom(order=1), which the official ViT fine-tuning code applies."""
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    dtype = grid.dtype
    grid = grid.float()
    if mode == "official":
        out = F.interpolate(grid, size=size, mode="bilinear", align_corners=True)
    elif mode in ("bilinear", "bicubic"):
        out = F.interpolate(grid, size=size, mode=mode, align_corners=False, antialias=antialias)
    else:
        raise VitkitError(f"unknown resample mode '{mode}'; valid: official, bilinear, bicubic")
    return out.to(dtype)


def resample_abs_pos_embed(
    posemb: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = False,
) -> Tensor:
    """Resample a (1, prefix + H*W, D) table to a new patch grid in 2D; prefix rows are kept as they are."""
    prefix, table = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    n, dim = table.shape[1], table.shape[2]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise VitkitError(f"position table of {n} patches is not square; pass old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise VitkitError(f"position table has {n} patches, not a {old_grid[0]}x{old_grid[1]} grid")
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    table = table.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    table = _interpolate(table, new_grid, mode, antialias)
    table = table.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, table], dim=1)


def resample_1d(table: Tensor, length: int, mode: str = "bicubic", antialias: bool = False) -> Tensor:
    """Resample a (1, L, C) row or column table of the 2D-learned embedding to a new length."""
    if table.shape[1] == length:
        return table
    grid = table.permute(0, 2, 1).unsqueeze(-1)  # (1, C, L, 1)
    return _interpolate(grid, (length, 1), mode, antialias).squeeze(-1).permute(0, 2, 1)


def learned_2d(row: Tensor, col: Tensor) -> Tensor:
    """Appendix D.4's 2D embedding: each patch concatenates its row's and its column's D/2 vectors."""
    gh, gw = row.shape[1], col.shape[1]
    rows = row[:, :, None, :].expand(-1, gh, gw, -1)
    cols = col[:, None, :, :].expand(-1, gh, gw, -1)
    return torch.cat([rows, cols], dim=-1).reshape(1, gh * gw, -1)


def cached(cache: dict, key: tuple, build):
    """`build()` once per key (grid, device, dtype): position tables and offsets that only depend on the
    grid are not rebuilt and copied to the device in every block of every forward. While tracing for
    export, the graph must compute them from the input's size, so nothing is cached then."""
    if torch.jit.is_tracing():
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2D sine-cosine table (1, H*W, D): a quarter of the channels per sin/cos of row/column."""
    gh, gw = grid
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                          indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]


def relative_offsets(grid: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    """(N, N) row and column offsets of every pair of patches, shifted to index the offset table."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ys[:, None] - ys[None, :] + gh - 1, xs[:, None] - xs[None, :] + gw - 1


class RelativePositionBias(nn.Module):
    """Learned per-head attention bias indexed by the (row, column) offset of two patches.

    The table covers offsets -(H-1)..H-1 by -(W-1)..W-1 of the training grid and is resampled in 2D
    for other grids. Pairs involving the class token get three learned biases per head instead:
    class->patch, patch->class, class->class.
    """

    def __init__(self, num_heads: int, grid: tuple[int, int], num_prefix_tokens: int,
                 mode: str = "bicubic", antialias: bool = False):
        super().__init__()
        self.grid, self.num_prefix_tokens = tuple(grid), num_prefix_tokens
        self.mode, self.antialias = mode, antialias
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * grid[0] - 1, 2 * grid[1] - 1))
        self.prefix = nn.Parameter(torch.zeros(num_heads, 3)) if num_prefix_tokens else None
        nn.init.trunc_normal_(self.table, std=0.02)
        self._offsets: dict = {}

    def table_for(self, grid: tuple[int, int]) -> Tensor:
        size = (2 * grid[0] - 1, 2 * grid[1] - 1)
        return _interpolate(self.table[None], size, self.mode, self.antialias)[0]

    def forward(self, grid: tuple[int, int]) -> Tensor:
        """The additive attention bias, shape (heads, T, T) with T = prefix + H*W."""
        table = self.table_for(grid)
        dy, dx = cached(self._offsets, (tuple(grid), table.device), lambda: relative_offsets(grid, table.device))
        bias = table[:, dy, dx]  # (heads, N, N)
        if self.prefix is None:
            return bias
        heads, n = bias.shape[0], bias.shape[-1]
        class_to_patch, patch_to_class, class_to_class = self.prefix.view(heads, 3, 1, 1).unbind(1)
        first_row = torch.cat([class_to_class, class_to_patch.expand(heads, 1, n)], dim=2)
        rows = torch.cat([patch_to_class.expand(heads, n, 1), bias], dim=2)
        return torch.cat([first_row, rows], dim=1)  # built by concatenation: a traced graph keeps n free
