"""From a data spec to train/val/test datasets whose samples are augmented, normalised tensors."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..config import AugConfig, DataConfig
from .. import rng
from ..errors import VitkitError
from . import sources
from .images import read_image
from .batching import EpochBatches, collate
from .shards import ShardSet, open_shards
from .sources import read_blob
from .transforms import Preprocess, rand_augment, random_crop_with_padding, random_resized_crop, resize

PAPER_MEAN, PAPER_STD = 0.5, 0.5  # inputs scaled to [-1, 1], as for the paper's models


def load_source(spec: str, download: bool = False, in_chans: int | None = None) -> sources.Source:
    """`digits`, `synthetic`, `mnist:DIR`, `folder:DIR`, `cifar10:DIR`, `cifar100:DIR` (`shards:` is streamed)."""
    kind, _, arg = spec.partition(":")
    if kind in ("digits", "synthetic"):
        if arg:
            raise VitkitError(f"data spec '{spec}': '{kind}' takes no directory")
        return sources.load_digits() if kind == "digits" else sources.load_synthetic()
    if kind not in ("mnist", "folder", "cifar10", "cifar100"):
        raise VitkitError(f"unknown data spec '{spec}'; use digits, synthetic, mnist:DIR, folder:DIR, "
                          f"cifar10:DIR, cifar100:DIR or shards:DIR/train-{{000000..000009}}.tar")
    if not arg:
        raise VitkitError(f"data spec '{spec}' needs a directory: {kind}:DIR")
    if download:
        sources.download(kind, arg)
    if kind == "mnist":
        return sources.load_idx_dir(arg)
    if kind == "folder":
        return sources.load_folder(arg, in_chans)
    return sources.load_cifar(arg, fine=kind == "cifar100")


def stratified_split(labels: Tensor, fraction: float, seed: int, which: int) -> tuple[Tensor, Tensor]:
    """Indices (kept, held_out) with `fraction` of every class held out, chosen by a seeded shuffle;
    `which` names the hold-out (rng.SPLIT_*), so the val and test hold-outs are independent draws."""
    g = rng.generator(seed, "split", which)
    kept, held = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = int(round(len(idx) * fraction))
        n = min(n, len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[:n])
        kept.append(idx[n:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


class ImageDataset(Dataset):
    """Samples of one split: uint8 image -> (train) augmentation -> normalised float tensor.

    A sample's randomness depends only on (seed, epoch, index), so runs resume exactly and results do
    not depend on the number of workers. Unreadable files yield None (or raise, with `strict`)."""

    def __init__(self, split: sources.Split, pre: Preprocess, aug: AugConfig | None = None, seed: int = 0,
                 strict: bool = False):
        self.split, self.pre, self.aug, self.seed, self.strict = split, pre, aug, seed, strict
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def raw(self, i: int) -> Tensor:
        if self.split.images is not None:
            return self.split.images[i]
        if self.split.blobs is not None:
            return read_image(io.BytesIO(read_blob(self.split.blobs[i])), self.pre.in_chans, self.split.paths[i])
        return read_image(self.split.paths[i], self.pre.in_chans)

    def __getitem__(self, i: int):
        try:
            img = self.raw(i)
        except VitkitError:
            if self.strict:
                raise
            return None, int(self.split.labels[i]), self.split.paths[i]
        return self.transform(img, self.epoch, i), int(self.split.labels[i]), None

    def transform(self, img: Tensor, epoch: int, key: int) -> Tensor:
        """uint8 image -> model input; training augmentation is seeded by (seed, epoch, sample key)."""
        if img.shape[0] != self.pre.in_chans:  # in-memory sources of another channel count
            img = img.expand(3, -1, -1) if self.pre.in_chans == 3 else img.float().mean(0, keepdim=True).round().byte()
        if self.aug is None:
            return self.pre.eval(img)
        g = rng.generator(self.seed, "augment", epoch, key)
        return self.pre.normalize(self.augment(img.float() / 255.0, g))

    def augment(self, x: Tensor, g: torch.Generator) -> Tensor:
        a, size = self.aug, self.pre.img_size
        if a.random_resized_crop:
            x = random_resized_crop(x, size, g, scale=(a.rrc_scale_min, 1.0))
        else:
            x = resize(x, size, self.pre.interpolation)
        x = random_crop_with_padding(x, a.crop_padding, g)
        if a.hflip and torch.rand((), generator=g).item() < 0.5:
            x = x.flip(-1)
        if a.randaugment_n:
            x = rand_augment(x, a.randaugment_n, a.randaugment_m, g)
        return x


@dataclass
class DataBundle:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None
    classes: list[str]
    pre: Preprocess
    skipped: list[str] = field(default_factory=list)
    stream: "ShardSet | None" = None  # streamed train shards (then `train` only holds the transform)
    image_size: tuple[int, int] | None = None  # the training images' median size, before any resizing

    @property
    def train_size(self) -> int:
        return len(self.stream) if self.stream is not None else len(self.train)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def build_data(cfg: DataConfig, aug: AugConfig, img_size: tuple[int, int], in_chans: int | None,
               seed: int = 0, mean: list[float] | None = None, std: list[float] | None = None) -> DataBundle:
    """Load the source, carve val (and a test split for folders without one), wrap in datasets."""
    stream = None
    if cfg.spec.startswith("shards:"):
        stream, src = open_shards(cfg.spec.partition(":")[2])
        if src.val is None or src.test is None:
            raise VitkitError(f"{cfg.spec}: index.json lists no val and test shards; write them with `vitkit data pack`")
        if cfg.limit_train:
            raise VitkitError("data.limit_train does not apply to streamed shards; pack a smaller set instead")
    else:
        src = load_source(cfg.spec, cfg.download, in_chans)
    in_chans = in_chans or src.in_chans
    train, val, test = src.train, src.val, src.test
    if test is None:
        if cfg.test_fraction <= 0:
            raise VitkitError(f"{cfg.spec} has no test split; set data.test_fraction > 0 to hold one out")
        keep, held = stratified_split(train.labels, cfg.test_fraction, 0, rng.SPLIT_TEST)  # the same for every seed
        train, test = train.subset(keep), train.subset(held)
    if cfg.limit_train:
        keep = stratified_split(train.labels, cfg.limit_train / len(train), seed, rng.SPLIT_LIMIT)[1] \
            if cfg.limit_train < len(train) else torch.arange(len(train))
        train = train.subset(keep)
    if val is None:
        if cfg.val_fraction > 0:
            keep, held = stratified_split(train.labels, cfg.val_fraction, seed, rng.SPLIT_VAL)
            train, val = train.subset(keep), train.subset(held)
        else:
            val = test  # no validation requested: the held-out test split also serves for model selection
    if len(train) == 0 and stream is None:
        raise VitkitError(f"{cfg.spec}: the training split is empty")
    pre = Preprocess(tuple(img_size), in_chans, tuple(mean or (PAPER_MEAN,) * in_chans),
                     tuple(std or (PAPER_STD,) * in_chans))
    return DataBundle(ImageDataset(train, pre, aug, seed, cfg.strict), ImageDataset(val, pre, None, seed, cfg.strict),
                      ImageDataset(test, pre, None, seed, cfg.strict), src.classes, pre, src.skipped, stream,
                      train.typical_size() if stream is None else None)


def make_loader(ds: ImageDataset, batch_size: int, workers: int, sampler: EpochBatches | None = None,
                pin_memory: bool = False) -> DataLoader:
    """`pin_memory`: page-locked batches, so copies to a GPU run asynchronously."""
    sampler = sampler or EpochBatches(len(ds), batch_size, 0, shuffle=False)
    return DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False,
                      multiprocessing_context="fork" if workers else None, pin_memory=pin_memory)


def measure_loader(loader: DataLoader, max_batches: int = 20) -> float:
    """Images per second the loader delivers on its own (no model): shows whether data starves training."""
    n, t0 = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        if batch["x"] is not None:
            n += len(batch["x"])
        if i + 1 >= max_batches:
            break
    return n / max(time.perf_counter() - t0, 1e-9)
