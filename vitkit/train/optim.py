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
    """SGD with momentum; Adam; AdamW, whose decoupled decay (w -= lr * weight_decay * w, weight matrices
    only) is what the official code's Adam with weight decay does. The config refuses decay for adam."""
    groups = param_groups(model, cfg.weight_decay if cfg.name != "adam" else 0.0)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    kind = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=_can_fuse(groups))


def _can_fuse(groups: list[dict]) -> bool:
    """The fused (one kernel for all tensors) AdamW: 5-20% faster steps on CPU for small models. Sharded
    (DTensor) parameters keep the reference implementation."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(type(p) is nn.Parameter and p.dtype.is_floating_point and p.device.type in ("cpu", "cuda")
                                for p in params)


def warmup_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    """The warm-up in optimizer steps: `warmup_steps` as given, else `warmup_epochs` of steps."""
    return cfg.warmup_steps if cfg.warmup_steps else round(cfg.warmup_epochs * steps_per_epoch)


def lr_at(step: int, total: int, warmup: int, cfg: OptimConfig) -> float:
    """Linear warm-up to the peak, then cosine or linear decay that arrives at min_lr when step `total`
    (the end of the last step) is reached."""
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
