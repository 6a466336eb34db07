"""Reading sharded data in the WebDataset layout: plain tar files whose members `KEY.png`, `KEY.cls` (and
optionally `KEY.json`) form one sample, plus an `index.json` with the classes and per-shard counts.

`vitkit.data.pack` writes them from any data spec. Training streams the train shards sequentially (no random
access, so they can live on network storage): shards are dealt to (process, worker) slots, samples
pass through a seeded shuffle buffer, and each slot cuts its own batches. Validation and test shards
are indexed by member offset and read like any other split, so evaluation is exact and shardable.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from .. import rng
from ..errors import VitkitError
from .batching import collate
from .images import read_image
from .sources import Source, Split

INDEX = "index.json"
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar a-001.tar a-002.tar; `{x,y}` lists too (the WebDataset syntax)."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo:
            raise VitkitError(f"shard pattern '{pattern}': range {body} runs backwards")
        width = len(rng.group(1))
        items = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand_braces(pattern[:m.start()] + item + pattern[m.end():])]


# --- reading ---------------------------------------------------------------------------------------------
def _samples(path: str) -> Iterator[tuple[str, dict[str, tarfile.TarInfo], tarfile.TarFile]]:
    """(key, {extension: member}) for each sample of one tar, in file order."""
    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as e:
        raise VitkitError(f"{path}: not a readable tar shard ({e})") from None
    with tar:
        key, group = None, {}
        try:
            for m in tar:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                k, _, ext = base.partition(".")
                if k != key and group:
                    yield key, group, tar
                    group = {}
                key = k
                group[ext.lower()] = m
        except tarfile.TarError as e:
            raise VitkitError(f"{path}: truncated or corrupt tar shard ({e})") from None
        if group:
            yield key, group, tar


IMAGE_FIELDS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "pgm")


def _image_member(path: str, key: str, group: dict) -> tarfile.TarInfo:
    for f in IMAGE_FIELDS:
        if f in group:
            return group[f]
    raise VitkitError(f"{path}: sample '{key}' has no image ({', '.join(IMAGE_FIELDS)})")


def _label(path: str, key: str, group: dict, tar: tarfile.TarFile) -> int:
    if "cls" not in group:
        raise VitkitError(f"{path}: sample '{key}' has no .cls label")
    text = tar.extractfile(group["cls"]).read().decode().strip()
    try:
        return int(text)
    except ValueError:
        raise VitkitError(f"{path}: sample '{key}' has label '{text}', not an integer") from None


@dataclass
class ShardSet:
    urls: list[str]
    counts: list[int]
    classes: list[str]
    in_chans: int

    def __len__(self) -> int:
        return sum(self.counts)


def _read_index(directory: Path) -> dict:
    path = directory / INDEX
    if not path.is_file():
        raise VitkitError(f"{path} not found: shards need the index that `vitkit data pack` writes "
                          f"(classes, per-shard counts, val/test shards)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VitkitError(f"{path}: not valid JSON ({e})") from None


def open_shards(spec_arg: str) -> tuple[ShardSet, Source]:
    """`DIR/train-{000000..000009}.tar` -> the streamed train shards and a Source whose val/test are
    indexed members of the other shards that index.json lists (train there is an empty placeholder)."""
    urls = expand_braces(spec_arg)
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise VitkitError(f"shard {missing[0]} not found ({len(missing)} of {len(urls)} missing)")
    directory = Path(urls[0]).parent
    index = _read_index(directory)
    known = {}
    for name, info in index["splits"].items():
        for u, c in zip(expand_braces(str(directory / info["pattern"])), info["counts"]):
            known[os.path.normpath(u)] = c
    counts = []
    for u in urls:
        if os.path.normpath(u) not in known:
            raise VitkitError(f"shard {u} is not listed in {directory / INDEX}")
        counts.append(known[os.path.normpath(u)])
    classes, in_chans = index["classes"], int(index["in_chans"])

    def indexed(name: str) -> Split | None:
        if name not in index["splits"]:
            return None
        return index_members(expand_braces(str(directory / index["splits"][name]["pattern"])))

    source = Source(Split(torch.zeros(0, dtype=torch.int64)), indexed("test"), classes, in_chans, val=indexed("val"))
    return ShardSet(urls, counts, classes, in_chans), source


def index_members(urls: list[str]) -> Split:
    """A Split whose images are tar members read by offset (random access for evaluation)."""
    labels, names, blobs = [], [], []
    for u in urls:
        for key, group, tar in _samples(u):
            m = _image_member(u, key, group)
            labels.append(_label(u, key, group, tar))
            names.append(f"{u}:{m.name}")
            blobs.append((u, m.offset_data, m.size))
    return Split(torch.tensor(labels, dtype=torch.int64), paths=names, blobs=blobs)


class ShardStream(IterableDataset):
    """The training stream: yields collated batches {"x", "y", "skipped"} of `batch_size` samples.

    Shard i belongs to slot i mod (world_size x workers): every sample is read by exactly one
    (process, worker) per epoch. Each slot shuffles its shards and its samples (a buffer of
    `buffer` samples) with a generator seeded by (seed, epoch, slot), so an epoch replays exactly."""

    def __init__(self, shards: ShardSet, transform, batch_size: int, seed: int = 0, buffer: int = 1000,
                 rank: int = 0, world_size: int = 1, workers: int = 0, shuffle: bool = True, drop_last: bool = True):
        self.shards, self.transform, self.batch_size, self.seed, self.buffer = shards, transform, batch_size, seed, buffer
        self.rank, self.world_size, self.workers = rank, world_size, max(workers, 1)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0

    def slot_shards(self, slot: int) -> list[int]:
        return list(range(slot, len(self.shards.urls), self.world_size * self.workers))

    def batches_per_epoch(self) -> int:
        """Batches every process can deliver in an epoch (the minimum over processes: they step together)."""
        def per_rank(rank: int) -> int:
            total = 0
            for w in range(self.workers):
                n = sum(self.shards.counts[i] for i in self.slot_shards(rank * self.workers + w))
                total += n // self.batch_size if self.drop_last else -(-n // self.batch_size)
            return total
        return min(per_rank(r) for r in range(self.world_size))

    def __len__(self) -> int:
        return self.batches_per_epoch()

    def _slot(self) -> int:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise VitkitError(f"ShardStream was set up for {self.workers} workers, the loader has {info.num_workers}")
        return self.rank * self.workers + worker

    def samples(self) -> Iterator[tuple[Tensor | None, int, str | None, int]]:
        """(image uint8 or None, label, name if unreadable, key number) of this slot, shuffled."""
        slot = self._slot()
        g = rng.generator(self.seed, "shard_shuffle", self.epoch, slot)
        order = self.slot_shards(slot)
        if self.shuffle:
            order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
        buf: list = []
        for i in order:
            url, n = self.shards.urls[i], 0
            for key, group, tar in _samples(url):
                m = _image_member(url, key, group)
                label = _label(url, key, group, tar)
                name = f"{url}:{m.name}"
                n += 1
                try:
                    data = tar.extractfile(m).read()
                except (OSError, tarfile.TarError) as e:
                    raise VitkitError(f"{url}: truncated or corrupt tar shard ({e})") from None
                try:
                    item = (read_image(io.BytesIO(data), self.shards.in_chans, name), label, None, _key_number(key))
                except VitkitError:
                    item = (None, label, name, _key_number(key))
                if not self.shuffle:
                    yield item
                    continue
                buf.append(item)
                if len(buf) >= self.buffer:
                    yield buf.pop(int(torch.randint(len(buf), (1,), generator=g)))
            if n != self.shards.counts[i]:
                raise VitkitError(f"{url}: truncated or corrupt tar shard (holds {n} samples, "
                                  f"index.json says {self.shards.counts[i]})")
        while buf:
            yield buf.pop(int(torch.randint(len(buf), (1,), generator=g)))

    def __iter__(self):
        batch = []
        for img, label, bad, key in self.samples():
            batch.append((None if img is None else self.transform(img, self.epoch, key), label, bad))
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch and not self.drop_last:
            yield collate(batch)


def _key_number(key: str) -> int:
    """A stable integer per sample key (seeds its augmentation)."""
    return int(key) if key.isdigit() else int.from_bytes(key.encode()[-8:].rjust(8, b"\0"), "big") % (2 ** 31)
