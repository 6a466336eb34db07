"""One source of randomness: every stream a run draws is its own, whatever its key."""

import pytest
import torch

from vitkit import rng


def test_streams_of_100_epochs_x_1000_batches_x_every_purpose_are_distinct():
    seeds = set()
    count = 0
    for purpose, indices in rng.PURPOSES.items():
        if len(indices) == 2:
            keys = [(e, b) for e in range(100) for b in range(1000)]
        elif len(indices) == 1:
            keys = [(e,) for e in range(100)]
        else:
            keys = [()]
        for key in keys:
            seeds.add(rng.seed_for(0, purpose, *key))
        count += len(keys)
    assert len(seeds) == count  # no two (purpose, indices) share a stream


def test_the_old_formula_collided_and_the_helper_does_not():
    # seed * 1_000_003 + step * 7 + batch: with 8 batches per epoch, epoch 0's last batch (step 7,
    # batch 8) and epoch 1's first (step 8, batch 1) both got 57
    assert 0 * 1_000_003 + 7 * 7 + 8 == 0 * 1_000_003 + 8 * 7 + 1
    assert rng.seed_for(0, "mix", 0, 8) != rng.seed_for(0, "mix", 1, 1)


def test_a_stream_depends_on_its_key_alone():
    a = torch.rand(5, generator=rng.generator(3, "augment", 2, 17))
    torch.rand(100)  # the global generator moving on changes nothing
    assert torch.equal(a, torch.rand(5, generator=rng.generator(3, "augment", 2, 17)))
    assert not torch.equal(a, torch.rand(5, generator=rng.generator(4, "augment", 2, 17)))
    assert rng.numpy_rng(1, "fewshot", 5, 0).integers(1 << 30) == rng.numpy_rng(1, "fewshot", 5, 0).integers(1 << 30)


def test_a_key_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="takes 2 indices"):
        rng.seed_for(0, "augment", 3)
    with pytest.raises(ValueError, match="unknown random-stream purpose"):
        rng.seed_for(0, "augmentation", 1, 2)
