"""Cutting a split into batches: the seeded per-epoch order, the rank's slice of each global batch,
and collation that keeps going past unreadable images."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import rng


def collate(batch: list) -> dict:
    """Stack the readable samples; report the names of the unreadable ones."""
    good = [b for b in batch if b[0] is not None]
    skipped = [b[2] for b in batch if b[0] is None]
    if not good:
        return {"x": None, "y": None, "skipped": skipped}
    return {"x": torch.stack([b[0] for b in good]), "y": torch.tensor([b[1] for b in good]), "skipped": skipped}


class EpochBatches(torch.utils.data.Sampler):
    """Seeded per-epoch shuffle, cut into batches; `skip` batches are dropped (mid-epoch resume).

    With several processes every one walks the same global batches and takes its `rank`-th slice, so
    N processes with batch B/N see exactly the samples one process with batch B sees."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def order(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=rng.generator(self.seed, "batch_order", self.epoch))

    def __iter__(self):
        order = self.order().tolist()
        batches = [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size and len(batches) > 1:
            batches = batches[:-1]
        for batch in batches[self.skip:]:
            if self.world_size > 1:
                part = -(-len(batch) // self.world_size)
                batch = batch[self.rank * part:(self.rank + 1) * part]
            yield batch

    def __len__(self) -> int:
        full = self.n // self.batch_size
        return (full if self.drop_last and full else -(-self.n // self.batch_size)) - self.skip
