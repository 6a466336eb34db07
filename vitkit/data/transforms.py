"""Augmentation and preprocessing on tensors (no torchvision). Each random transform takes an explicit
torch.Generator, so a sample's augmentation depends only on (seed, epoch, index): resumable and
independent of the number of workers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitkitError


@dataclass
class Preprocess:
    """What a model expects: travels with every checkpoint so eval/predict apply exactly this."""

    img_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def to_dict(self) -> dict:
        return {"img_size": list(self.img_size), "in_chans": self.in_chans, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(tuple(d["img_size"]), int(d["in_chans"]), tuple(d["mean"]), tuple(d["std"]),
                   d.get("interpolation", "bilinear"), float(d.get("crop_pct", 1.0)))

    @classmethod
    def stored_in(cls, meta: dict, checkpoint: object) -> "Preprocess":
        """The preprocessing a checkpoint carries; without it, images cannot be prepared as in training."""
        if "preprocess" not in meta:
            raise VitkitError(f"{checkpoint} records no preprocessing (input size, mean, std), so images cannot be "
                              "prepared for it; save it with model_meta(model, preprocess=...) or use its run folder")
        return cls.from_dict(meta["preprocess"])

    def normalize(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std

    def eval(self, img: Tensor) -> Tensor:
        """uint8 (C, H, W) -> normalised float: resize the shorter side to size / crop_pct, centre crop."""
        x = img.float() / 255.0
        th, tw = self.img_size
        h, w = x.shape[-2:]
        if (h, w) != (th, tw):
            scale = max(th / h, tw / w) / self.crop_pct
            nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
            x = resize(x, (nh, nw), self.interpolation)
            top, left = (nh - th) // 2, (nw - tw) // 2
            x = x[:, top:top + th, left:left + tw]
        return self.normalize(x)


def resize(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    aa = mode in ("bilinear", "bicubic")
    out = F.interpolate(x[None], size=size, mode=mode, antialias=aa, **({"align_corners": False} if aa else {}))[0]
    return out.clamp(0, 1)


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def random_resized_crop(x: Tensor, size: tuple[int, int], g: torch.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> Tensor:
    """Inception-style crop: a random area fraction and aspect ratio, resized to `size`."""
    h, w = x.shape[-2:]
    for _ in range(10):
        area = h * w * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return resize(x[:, top:top + ch, left:left + cw], size)
    return resize(x, size)


def random_crop_with_padding(x: Tensor, padding: int, g: torch.Generator) -> Tensor:
    """Zero-pad by `padding` and crop back to the original size at a random offset."""
    if padding <= 0:
        return x
    h, w = x.shape[-2:]
    x = F.pad(x, (padding,) * 4)
    top = int(torch.randint(0, 2 * padding + 1, (), generator=g))
    left = int(torch.randint(0, 2 * padding + 1, (), generator=g))
    return x[:, top:top + h, left:left + w]


def _affine(x: Tensor, matrix: list[list[float]]) -> Tensor:
    theta = torch.tensor(matrix, dtype=x.dtype)[None]
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def _gray(x: Tensor) -> Tensor:
    if x.shape[0] == 1:
        return x
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None].expand_as(x)


def _blend(a: Tensor, b: Tensor, factor: float) -> Tensor:
    return (b + factor * (a - b)).clamp(0, 1)


def _sharpen_base(x: Tensor) -> Tensor:
    k = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype) / 13
    blurred = F.conv2d(F.pad(x[:, None], (1, 1, 1, 1), mode="replicate"), k[None, None])[:, 0]
    return blurred


# RandAugment (Cubuk et al.): each op maps a magnitude in [0, 1] (m / 10) and a random sign to an image.
def _ops():
    return {
        "identity": lambda x, m, s: x,
        "autocontrast": lambda x, m, s: _autocontrast(x),
        "rotate": lambda x, m, s: _affine(x, [[math.cos(a := s * m * math.pi / 6), -math.sin(a), 0],
                                              [math.sin(a), math.cos(a), 0]]),
        "shear_x": lambda x, m, s: _affine(x, [[1, s * m * 0.3, 0], [0, 1, 0]]),
        "shear_y": lambda x, m, s: _affine(x, [[1, 0, 0], [s * m * 0.3, 1, 0]]),
        "translate_x": lambda x, m, s: _affine(x, [[1, 0, s * m * 0.45 * 2], [0, 1, 0]]),
        "translate_y": lambda x, m, s: _affine(x, [[1, 0, 0], [0, 1, s * m * 0.45 * 2]]),
        "brightness": lambda x, m, s: _blend(x, torch.zeros_like(x), 1 + s * m * 0.9),
        "contrast": lambda x, m, s: _blend(x, _gray(x).mean().expand_as(x), 1 + s * m * 0.9),
        "color": lambda x, m, s: _blend(x, _gray(x), 1 + s * m * 0.9),
        "sharpness": lambda x, m, s: _blend(x, _sharpen_base(x), 1 + s * m * 0.9),
        "solarize": lambda x, m, s: torch.where(x >= 1 - m, 1 - x, x),
        "posterize": lambda x, m, s: torch.floor(x * (2 ** (b := max(1, 8 - int(m * 4))))) / 2 ** b,
    }


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)


RAND_AUGMENT_OPS = _ops()


def rand_augment(x: Tensor, n: int, magnitude: float, g: torch.Generator) -> Tensor:
    """Apply `n` ops drawn uniformly, each at `magnitude` (0-10) with a random sign."""
    names = list(RAND_AUGMENT_OPS)
    m = min(max(magnitude, 0.0), 10.0) / 10.0
    for _ in range(n):
        op = names[int(torch.randint(0, len(names), (), generator=g))]
        sign = 1.0 if torch.rand((), generator=g).item() < 0.5 else -1.0
        x = RAND_AUGMENT_OPS[op](x, m, sign).clamp(0, 1)
    return x


def mix_batch(x: Tensor, y: Tensor, num_classes: int, mixup: float, cutmix: float, g: torch.Generator,
              smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Mixup (blend two images) or CutMix (paste a box), chosen per batch; soft targets (B, classes)."""
    target = one_hot(y, num_classes, smoothing)
    if mixup <= 0 and cutmix <= 0:
        return x, target
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand((), generator=g).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = _beta(alpha, g)
    perm = torch.randperm(x.shape[0], generator=g)
    if use_cutmix:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (), generator=g)), int(torch.randint(0, w, (), generator=g))
        t, b = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        l, r = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., t:b, l:r] = x[perm][..., t:b, l:r]
        lam = 1 - (b - t) * (r - l) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]


def _beta(alpha: float, g: torch.Generator) -> float:
    """Beta(alpha, alpha) drawn with the explicit generator."""
    while True:  # Johnk's method: exact for any alpha > 0
        u = torch.rand(2, generator=g).clamp_min(1e-12)
        x, y = u[0].item() ** (1 / alpha), u[1].item() ** (1 / alpha)
        if 0 < x + y <= 1:
            return x / (x + y)


def one_hot(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)
