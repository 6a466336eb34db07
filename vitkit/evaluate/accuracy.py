"""Top-1/top-5, per-class accuracy and the confusion matrix of a classifier over a data loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from ..plotting import pyplot, save


@dataclass
class Evaluation:
    loss: float
    top1: float
    top5: float
    count: int
    confusion: Tensor            # (true, predicted) counts
    skipped: list[str] = field(default_factory=list)

    metric = "acc"               # the name of `score` in logs and summaries

    @property
    def score(self) -> float:
        return self.top1

    def record(self) -> dict[str, float]:
        return {"loss": self.loss, "acc": self.top1, "top5": self.top5}

    def sums(self) -> list[float]:
        """Additive totals: what processes that evaluated a slice each all-reduce."""
        return [self.loss * self.count, self.top1 * self.count, self.top5 * self.count, self.count,
                *self.confusion.flatten().tolist()]

    @classmethod
    def from_sums(cls, sums: list[float], skipped: list[str]) -> "Evaluation":
        n, k = max(sums[3], 1), int(round(len(sums[4:]) ** 0.5))
        confusion = torch.tensor([round(v) for v in sums[4:]], dtype=torch.int64).view(k, k)
        return cls(sums[0] / n, sums[1] / n, sums[2] / n, int(sums[3]), confusion, skipped)

    @property
    def per_class(self) -> list[float]:
        totals = self.confusion.sum(1).clamp_min(1)
        return (self.confusion.diag() / totals).tolist()

    def to_dict(self, classes: list[str] | None = None) -> dict:
        names = classes or [str(i) for i in range(len(self.confusion))]
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5, "count": self.count,
                "per_class": dict(zip(names, self.per_class)), "confusion": self.confusion.tolist(),
                "skipped": self.skipped}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: str | torch.device = "cpu",
             autocast_dtype: torch.dtype | None = None, lockstep: bool = False) -> Evaluation:
    """Sums stay on the device and are read once at the end: no host synchronisation per batch.
    `lockstep`: the model is sharded across processes (FSDP), so a batch with no readable image (or an
    empty slice) still runs an empty forward, to take part in the processes' all-gathers."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros(2, dtype=torch.int64, device=device)  # top-1, top-5
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    n, skipped = 0, []
    for batch in loader:
        skipped += batch["skipped"]
        if batch["x"] is None:
            if lockstep:
                run_empty(model, device)
            continue
        x, y = (batch[k].to(device, non_blocking=True) for k in ("x", "y"))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits += torch.stack([(top[:, 0] == y).sum(), (top == y[:, None]).any(dim=1).sum()])
        confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes * num_classes)
        n += len(y)
    model.train(was_training)
    n_safe = max(n, 1)
    top1, top5 = hits.tolist()
    return Evaluation(loss_sum.item() / n_safe, top1 / n_safe, top5 / n_safe, n,
                      confusion.cpu().view(num_classes, num_classes), skipped)


def run_empty(model: nn.Module, device: torch.device) -> None:
    """A forward pass over zero images: what a process with nothing to evaluate runs beside the others."""
    cfg = model.cfg
    model(torch.zeros(0, cfg.in_chans, *cfg.img_size, device=device))


def plot_confusion(confusion: Tensor, classes: list[str], path: Path, title: str = "") -> None:
    plt = pyplot()

    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * n + 2), max(4, 0.45 * n + 2)))
    norm = confusion.float() / confusion.sum(1, keepdim=True).clamp_min(1)
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    save(fig, path)
