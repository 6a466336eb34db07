"""What a run optimises, behind one interface, so the training loop never asks which one it runs.

An objective turns the model into the module the steps run through, gives the loss and an accuracy
count for a batch, evaluates a model on a split with its own score, and says which weights a run
publishes: supervised classification (paper section 3) and masked patch prediction (appendix B.1.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AugConfig
from ..data.transforms import Preprocess, mix_batch
from ..evaluate.accuracy import Evaluation, evaluate


@dataclass
class BatchLoss:
    loss: Tensor
    correct: Tensor              # predictions the objective counts as right (a 0-d tensor: read it when needed) ...
    count: int                   # ... out of this many (images, or corrupted patches)


class Result(Protocol):
    """An evaluation: `score` (higher is better) picks the best checkpoint; `sums` add up across processes."""
    metric: str
    loss: float
    count: int
    skipped: list[str]

    @property
    def score(self) -> float: ...
    def record(self) -> dict[str, float]: ...
    def sums(self) -> list[float]: ...


class Objective(Protocol):
    name: str
    metric: str                  # what `correct / count` is called in logs ("acc", "mpp_acc")
    rng_purpose: str             # the random stream of a training batch (vitkit.rng)
    scores_test: bool            # whether the published weights alone can be scored on the test split
    # evaluate(..., lockstep=True): a sharded (FSDP) model, which every process must call for every batch

    def build(self, model: nn.Module) -> nn.Module: ...
    def publish(self, module: nn.Module) -> nn.Module: ...
    def batch_loss(self, net: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> BatchLoss: ...
    def evaluate(self, module: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None,
                 g: torch.Generator, lockstep: bool = False) -> Result: ...
    def from_sums(self, sums: list[float], skipped: list[str]) -> Result: ...


class Classification:
    """Cross-entropy on (mixed, smoothed) labels; scored by top-1, with top-5 and the confusion matrix."""
    name, metric, rng_purpose, scores_test = "classify", "acc", "mix", True

    def __init__(self, num_classes: int, aug: AugConfig):
        self.num_classes, self.aug = num_classes, aug

    def build(self, model: nn.Module) -> nn.Module:
        return model

    def publish(self, module: nn.Module) -> nn.Module:
        return module

    def batch_loss(self, net: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> BatchLoss:
        a = self.aug
        x, target = mix_batch(x, y, self.num_classes, a.mixup, a.cutmix, g, a.label_smoothing)
        logits = net(x)
        loss = F.cross_entropy(logits.float(), target.to(logits.device))
        return BatchLoss(loss, (logits.argmax(1) == y).sum(), len(y))

    def evaluate(self, module: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None,
                 g: torch.Generator, lockstep: bool = False) -> Evaluation:
        return evaluate(module, loader, self.num_classes, device, amp_dtype, lockstep)

    def from_sums(self, sums: list[float], skipped: list[str]) -> Evaluation:
        return Evaluation.from_sums(sums, skipped)


class MaskedPatches:
    """Masked patch prediction: the encoder plus [mask] embedding and colour head; the run publishes the
    encoder alone (it loads into fine-tuning), which cannot be scored without that head."""
    name, metric, rng_purpose, scores_test = "mpp", "mpp_acc", "mask", False

    def __init__(self, pre: Preprocess):
        self.pre = pre

    def build(self, model: nn.Module) -> nn.Module:
        from ..pretrain import MaskedPatchPrediction

        model.reset_classifier(0)  # no classifier while pre-training (DDP insists every parameter is used)
        return MaskedPatchPrediction(model, self.pre.mean, self.pre.std)

    def publish(self, module: nn.Module) -> nn.Module:
        return module.encoder

    def batch_loss(self, net: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> BatchLoss:
        loss, correct, count = net(x, g, loss=True)
        return BatchLoss(loss, correct, count)

    def evaluate(self, module: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None,
                 g: torch.Generator, lockstep: bool = False):
        from ..pretrain.mpp import evaluate_mpp

        return evaluate_mpp(module, loader, device, g, lockstep)

    def from_sums(self, sums: list[float], skipped: list[str]):
        from ..pretrain.mpp import MPPEvaluation

        return MPPEvaluation.from_sums(sums, skipped)


def objective_for(name: str, num_classes: int, aug: AugConfig, pre: Preprocess) -> Objective:
    """The objective `train.objective` names (the config has checked the name)."""
    return MaskedPatches(pre) if name == "mpp" else Classification(num_classes, aug)
