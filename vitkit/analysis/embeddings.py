"""Figure 7 (left and centre) of the paper: what the patch embedding and position embeddings learned."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitkitError


def position_similarity(model: nn.Module) -> Tensor:
    """(H, W, H, W) cosine similarity of each patch position's embedding to every other's, at the
    training grid."""
    if not hasattr(model, "position_embedding"):
        raise VitkitError(f"{type(model).__name__} has no position embeddings")
    grid = model.cfg.grid_size()
    with torch.no_grad():
        pos = model.position_embedding(grid)
    if pos is None:
        raise VitkitError(f"pos_embed='{model.cfg.pos_embed}' has no absolute position embeddings to compare")
    table = F.normalize(pos[0, model.num_prefix_tokens:].detach().float().cpu(), dim=-1)  # small: on the CPU
    return (table @ table.T).reshape(*grid, *grid)


def neighbour_contrast(sim: Tensor) -> dict[str, float]:
    """Mean similarity of 4-neighbours, of same-row/column pairs, and of pairs at least half the grid apart:
    the numbers behind the paper's "closer patches have more similar embeddings; row-column structure"."""
    gh, gw = sim.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    s = sim.reshape(gh * gw, gh * gw)
    dy, dx = (ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs()
    off = ~torch.eye(gh * gw, dtype=torch.bool)
    near = (dy + dx == 1)
    same_line = ((dy == 0) | (dx == 0)) & off
    other = (dy > 0) & (dx > 0)
    far = (torch.maximum(dy.float() / gh, dx.float() / gw) >= 0.5)
    return {"neighbours": s[near].mean().item(), "same_row_or_column": s[same_line].mean().item(),
            "different_row_and_column": s[other].mean().item(), "far": s[far].mean().item()}


def embedding_filters_pca(model: nn.Module, k: int = 28) -> tuple[Tensor, Tensor]:
    """Principal components of the patch-embedding filters: (k, C, P, P) components and their explained
    variance ratios. For a hybrid, the filters act on feature-map channels, so they are not images."""
    if getattr(model.patch_embed, "backbone", None) is not None:
        raise VitkitError("a hybrid's patch embedding acts on ResNet features, not pixels: no filter images")
    w = model.patch_embed.proj.weight.detach().float().cpu()  # D, C, P, P (small: on the CPU)
    flat = w.reshape(w.shape[0], -1)
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(k, vh.shape[0])
    var = s ** 2
    return vh[:k].reshape(k, *w.shape[1:]), var[:k] / var.sum().clamp_min(1e-12)
