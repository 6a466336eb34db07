"""Every random stream of a run, derived from (seed, purpose, indices) by a cryptographic hash.

A stream depends only on its key, never on what ran before it: runs resume exactly, N processes see
what one process sees, and results do not depend on the number of loader workers. BLAKE2b mixes
the whole key, so two different keys give unrelated streams (hand-made formulas such as
`seed * 1_000_003 + step * 7 + batch` collide: with 8 batches per epoch the last batch of epoch 0 and
the first of epoch 1 got the same one). BLAKE2b rather than numpy's SeedSequence: about 7 us against
40 us a key, and the loader draws one key per sample.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import torch

# Each stream has one purpose; its indices say which one (the keys below are the whole list).
PURPOSES = {
    "init": (),                          # model initialisation (the global torch generator)
    "augment": ("epoch", "sample"),      # per-sample training augmentation
    "batch_order": ("epoch",),           # the shuffle of one epoch
    "mix": ("epoch", "batch"),           # mixup / cutmix of one training batch
    "mask": ("epoch", "batch"),          # masked-patch-prediction corruption of one training batch
    "mask_eval": ("rank",),              # the fixed corruption MPP evaluation uses
    "split": ("which",),                 # hold-outs: SPLIT_TEST, SPLIT_VAL, SPLIT_LIMIT, SPLIT_DIGITS, SPLIT_CALIBRATION
    "shard_shuffle": ("epoch", "slot"),  # shard order and shuffle buffer of one loader slot
    "fewshot": ("shots", "draw"),        # one k-shot draw
    "fewshot_test": (),                  # the --max-test subset
    "synthetic": (),                     # the built-in synthetic data set
}
SPLIT_TEST, SPLIT_VAL, SPLIT_LIMIT, SPLIT_DIGITS, SPLIT_CALIBRATION = range(5)


def seed_for(seed: int, purpose: str, *indices: int) -> int:
    """A 63-bit seed for the stream (seed, purpose, indices)."""
    want = PURPOSES.get(purpose)
    if want is None:
        raise ValueError(f"unknown random-stream purpose '{purpose}' ({', '.join(PURPOSES)})")
    if len(indices) != len(want):
        raise ValueError(f"stream '{purpose}' takes {len(want)} indices ({', '.join(want) or 'none'}), got {len(indices)}")
    key = struct.pack(f"<{1 + len(indices)}q", int(seed), *(int(i) for i in indices))
    digest = hashlib.blake2b(key, digest_size=8, person=purpose.encode()[:16]).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int, purpose: str, *indices: int) -> torch.Generator:
    """A torch.Generator for the stream (seed, purpose, indices)."""
    return torch.Generator().manual_seed(seed_for(seed, purpose, *indices))


def numpy_rng(seed: int, purpose: str, *indices: int) -> np.random.Generator:
    """A numpy Generator for the stream (seed, purpose, indices)."""
    return np.random.default_rng(seed_for(seed, purpose, *indices))
