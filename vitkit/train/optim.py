"""The paper's optimisation: Adam/AdamW or SGD, decay only on weight matrices, warm-up then decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No decay on biases, norm parameters (1-D), position embeddings and tokens."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "adam":  # Adam with L2-free decoupled decay is AdamW; plain Adam gets none
        for g in groups:
            g["weight_decay"] = 0.0
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=_can_fuse(groups))


def _can_fuse(groups: list[dict]) -> bool:
    """The fused (one kernel for all tensors) AdamW: 5-20% faster steps on CPU for small models. Sharded
    (DTensor) parameters keep the reference implementation."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(type(p) is nn.Parameter and p.dtype.is_floating_point and p.device.type in ("cpu", "cuda")
                                for p in params)


def lr_at(step: int, total: int, warmup: int, cfg: OptimConfig) -> float:
    """Linear warm-up to the peak, then cosine or linear decay to min_lr at the last step."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    if cfg.schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * t
    return cfg.lr


class EMA:
    """Exponential moving average of the weights (float tensors only), for evaluation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1 - self.decay)
            else:
                self.shadow[k].copy_(v)
