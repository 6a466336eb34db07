"""Section 4.5 of the paper, as functions of a model and images: attention rollout and mean attention
distance. Both read the attention probabilities the model's own forward applies (`return_attn=True`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import VitkitError


def _require_attention(model: nn.Module) -> None:
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise VitkitError(f"{type(model).__name__} has no self-attention to analyse (a CNN baseline?); "
                          "use a ViT or hybrid checkpoint")


@torch.inference_mode()
def attentions(model: nn.Module, images: Tensor) -> tuple[Tensor, list[Tensor], tuple[int, int]]:
    """(logits, per-layer attention probabilities (B, heads, T, T), patch grid)."""
    _require_attention(model)
    model.eval()
    grid = model.cfg.grid_size(tuple(images.shape[-2:]))
    logits, attns = model(images, return_attn=True)
    return logits, attns, grid


def rollout_from_attentions(attns: list[Tensor], num_prefix_tokens: int) -> Tensor:
    """Abnar & Zuidema's rollout: per layer average the heads, add the identity, renormalise the rows, and
    multiply through the layers. Returns the (B, N) relevance of each patch for the class token (or, with
    no class token, the mean over the patch queries)."""
    joint = None
    for a in attns:
        a = a.float().mean(dim=1)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    if num_prefix_tokens:
        return joint[:, 0, num_prefix_tokens:]
    return joint.mean(dim=1)


@dataclass
class Explanation:
    """What `vitkit explain` and the server show for one image, from one forward pass."""
    logits: Tensor      # (classes,)
    rollout: Tensor     # (grid_h, grid_w), maximum 1
    last_heads: Tensor  # (heads, grid_h, grid_w): the last layer's class-token attention per head


def explain_image(model: nn.Module, x: Tensor) -> Explanation:
    """Rollout and last-layer heads of one prepared image `x` (1, C, H, W)."""
    logits, attns, grid = attentions(model, x)
    r = rollout_from_attentions(attns, model.num_prefix_tokens)[0].reshape(grid).float().cpu()
    last = attns[-1][0].float().cpu()  # heads, T, T
    p = model.num_prefix_tokens
    heads = (last[:, 0, p:] if p else last[:, p:, p:].mean(1)).reshape(-1, *grid)
    return Explanation(logits[0].float().cpu(), r / r.max().clamp_min(1e-12), heads)


def rollout(model: nn.Module, images: Tensor) -> Tensor:
    """Attention-rollout maps (B, grid_h, grid_w), each normalised to a maximum of 1."""
    _, attns, grid = attentions(model, images)
    r = rollout_from_attentions(attns, model.num_prefix_tokens).reshape(-1, *grid)
    return r / r.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def patch_distances(grid: tuple[int, int], cell: float) -> Tensor:
    """(N, N) Euclidean distances in input pixels between the centres of the patches of a grid."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=1).float() * cell
    return torch.cdist(centres, centres)


def distance_from_attentions(attns: list[Tensor], grid: tuple[int, int], cell: float,
                             num_prefix_tokens: int) -> Tensor:
    """(layers, heads, batch) mean attention distance: per query patch, the attention-weighted distance to
    the key patches (class token row and column excluded, weights renormalised over patches), averaged
    over the query patches."""
    dist = patch_distances(grid, cell)
    out = []
    for a in attns:
        a = a.float()[..., num_prefix_tokens:, num_prefix_tokens:]
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        out.append((a * dist.to(a.device)).sum(-1).mean(-1).permute(1, 0))  # heads, batch
    return torch.stack(out)


def cell_size(model: nn.Module) -> float:
    """Input pixels per token: the patch size, times the ResNet stride for a hybrid."""
    return float(model.cfg.pixels_per_token)


def mean_attention_distance(model: nn.Module, batches, max_images: int = 128) -> Tensor:
    """(layers, heads) mean attention distance in input pixels over up to `max_images` images.
    `batches` is a tensor of images or an iterable of tensors / loader batches ({"x": ...})."""
    if isinstance(batches, Tensor):
        batches = [batches]
    total, seen = None, 0
    for batch in batches:
        x = batch["x"] if isinstance(batch, dict) else batch
        if x is None:
            continue
        x = x[: max_images - seen]
        _, attns, grid = attentions(model, x.to(next(model.parameters()).device))
        d = distance_from_attentions(attns, grid, cell_size(model), model.num_prefix_tokens).sum(-1)
        total = d if total is None else total + d
        seen += len(x)
        if seen >= max_images:
            break
    if not seen:
        raise VitkitError("no images to measure attention distance on")
    return (total / seen).cpu()  # (layers, heads): a result to plot and save, on the CPU
