"""Masked patch prediction, the paper's self-supervised objective (appendix B.1.2).

Half of the patch embeddings are corrupted: of those, 80% are replaced by a learnable [mask] embedding,
10% by another patch's embedding, 10% are left as they are. For each corrupted patch the model predicts
the patch's mean colour quantised to 3 bits per channel (512 classes for RGB, 8 for grayscale) from its
final representation; the loss is the cross-entropy over corrupted patches only.

The encoder is an ordinary `VisionTransformer`: after pre-training it is saved alone, so the checkpoint
loads into `vitkit finetune` like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitkitError
from ..models.vit import VisionTransformer

CORRUPT_FRACTION = 0.5          # of the patches of every image
MASK, RANDOM = 0.8, 0.1         # of the corrupted ones; the remaining 10% keep their embedding
COLOUR_BITS = 3


@dataclass
class Corruption:
    """Which patches were corrupted, and how: boolean (B, N) masks."""
    corrupted: Tensor
    masked: Tensor
    replaced: Tensor


def sample_corruption(batch: int, patches: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> Corruption:
    """Exactly round(50%) of each image's patches corrupted; each corrupted patch is masked with p=0.8,
    replaced with p=0.1, kept with p=0.1."""
    n_corrupt = round(CORRUPT_FRACTION * patches)
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    corrupted = torch.zeros(batch, patches, dtype=torch.bool)
    corrupted.scatter_(1, order[:, :n_corrupt], True)
    u = torch.rand(batch, patches, generator=generator)
    masked = corrupted & (u < MASK)
    replaced = corrupted & (u >= MASK) & (u < MASK + RANDOM)
    return Corruption(corrupted.to(device), masked.to(device), replaced.to(device))


def colour_targets(pixels: Tensor, grid: tuple[int, int], bits: int = COLOUR_BITS) -> Tensor:
    """The class of each patch's mean colour: (B, C, H, W) pixels in [0, 1] -> (B, N) integers in
    [0, 2^(bits*C)). Channel values are binned into 2^bits equal bins; the first channel is the most
    significant digit. Patches are the grid cells, so hybrids use their feature-map cells."""
    levels = 2 ** bits
    mean = F.adaptive_avg_pool2d(pixels, grid)                         # (B, C, gh, gw)
    q = (mean * levels).floor().clamp_(0, levels - 1).long()
    index = torch.zeros_like(q[:, 0])
    for c in range(q.shape[1]):
        index = index * levels + q[:, c]
    return index.flatten(1)


class MaskedPatchPrediction(nn.Module):
    """A ViT encoder plus the [mask] embedding and the colour-prediction head.

    `forward(x, generator)` returns (logits over colours for every patch (B, N, K), targets (B, N),
    Corruption). `x` is the normalised input; `mean`/`std` undo the normalisation for the targets.
    """

    def __init__(self, encoder: VisionTransformer, mean: list[float], std: list[float]):
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise VitkitError(f"masked patch prediction needs a ViT encoder, not {type(encoder).__name__}")
        self.encoder = encoder
        self.cfg = encoder.cfg
        d, c = encoder.embed_dim, encoder.cfg.in_chans
        self.num_colours = 2 ** (COLOUR_BITS * c)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.mask_token, std=0.02)
        self.mpp_head = nn.Linear(d, self.num_colours)
        nn.init.zeros_(self.mpp_head.weight)
        nn.init.zeros_(self.mpp_head.bias)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def corrupt(self, z: Tensor, c: Corruption, generator: torch.Generator | None) -> Tensor:
        b, n, d = z.shape
        flat = z.reshape(b * n, d)
        # Another patch of the batch: an offset in 1..B*N-1 never points back at the patch itself.
        offset = torch.randint(1, max(b * n, 2), (b * n,), generator=generator).to(z.device)
        others = flat[(torch.arange(b * n, device=z.device) + offset) % (b * n)].view(b, n, d)
        z = torch.where(c.replaced[..., None], others, z)
        return torch.where(c.masked[..., None], self.mask_token.to(z.dtype).expand(b, n, d), z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None,
                loss: bool = False) -> tuple[Tensor, Tensor, Corruption] | tuple[Tensor, Tensor, int]:
        """(colour logits of every patch (B, N, K), targets (B, N), Corruption); with `loss=True`, the
        cross-entropy over the corrupted patches and (correct, count) of their predictions."""
        enc = self.encoder
        seen: dict = {}

        def hook(z: Tensor, grid: tuple[int, int]) -> Tensor:
            seen["grid"], seen["c"] = grid, sample_corruption(z.shape[0], z.shape[1], generator, z.device)
            return self.corrupt(z, seen["c"], generator)

        tokens = enc.forward_features(x, patch_hook=hook)
        logits = self.mpp_head(tokens[:, enc.num_prefix_tokens:])
        targets = colour_targets((x * self.std + self.mean).clamp(0, 1), seen["grid"])
        if not loss:
            return logits, targets, seen["c"]
        picked, wanted = logits[seen["c"].corrupted], targets[seen["c"].corrupted]
        return (F.cross_entropy(picked.float(), wanted), (picked.argmax(-1) == wanted).sum(),
                int(wanted.numel()))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token"}


@dataclass
class MPPEvaluation:
    """Masked patch prediction's own score: loss and colour accuracy over the corrupted patches."""
    loss: float
    colour_acc: float
    count: int                   # corrupted patches scored
    skipped: list[str]

    metric = "mpp_acc"

    @property
    def score(self) -> float:
        return self.colour_acc

    def record(self) -> dict[str, float]:
        return {"loss": self.loss, "mpp_acc": self.colour_acc}

    def sums(self) -> list[float]:
        return [self.loss * self.count, self.colour_acc * self.count, self.count]

    @classmethod
    def from_sums(cls, sums: list[float], skipped: list[str]) -> "MPPEvaluation":
        n = max(sums[2], 1)
        return cls(sums[0] / n, sums[1] / n, int(sums[2]), skipped)


@torch.inference_mode()
def evaluate_mpp(model: MaskedPatchPrediction, loader, device: torch.device | str,
                 generator: torch.Generator, lockstep: bool = False) -> MPPEvaluation:
    """Loss and colour accuracy on corrupted patches; the caller passes the same seeded generator every
    epoch, so the corruption is the same and epochs compare."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count, skipped = 0.0, 0, 0, []
    for batch in loader:
        skipped += batch["skipped"]
        if batch["x"] is None:
            if lockstep:  # a sharded model: take part in the other processes' all-gathers
                model(torch.zeros(0, model.cfg.in_chans, *model.cfg.img_size, device=device), generator)
            continue
        loss, c, n = model(batch["x"].to(device), generator, loss=True)
        loss_sum, correct, count = loss_sum + loss.item() * n, correct + int(c), count + n
    model.train(was_training)
    return MPPEvaluation.from_sums([loss_sum, correct, count], skipped)
