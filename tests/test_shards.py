"""WebDataset-style shards: brace patterns, packing, streaming split by process and worker, errors."""

import json
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from vitkit import VitkitError
from vitkit.config import build_config
from vitkit.data.datasets import build_data
from vitkit.data.pack import pack
from vitkit.data.shards import ShardStream, expand_braces, open_shards
from vitkit.train import train


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("d/a-{000..002}.tar") == ["d/a-000.tar", "d/a-001.tar", "d/a-002.tar"]
    assert expand_braces("{x,y}-{8..10}.tar") == ["x-8.tar", "x-9.tar", "x-10.tar", "y-8.tar", "y-9.tar", "y-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(VitkitError, match="runs backwards"):
        expand_braces("a-{5..1}.tar")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    index = pack("digits", out, shard_size=150)
    return out, index


def test_pack_writes_webdataset_members_and_an_index(packed):
    out, index = packed
    counts = index["splits"]["train"]["counts"]
    assert sum(counts) + sum(index["splits"]["val"]["counts"]) + sum(index["splits"]["test"]["counts"]) == 1797
    assert all(c == 150 for c in counts[:-1]) and 0 < counts[-1] <= 150
    with tarfile.open(out / "train-000000.tar") as tar:
        names = tar.getnames()[:3]
        assert names == ["00000000.png", "00000000.cls", "00000000.json"]
        label = int(tar.extractfile(names[1]).read())
        assert json.loads(tar.extractfile(names[2]).read())["class"] == str(label)
    with pytest.raises(VitkitError, match="already holds shards"):
        pack("digits", out)


def test_streamed_training_split_matches_the_in_memory_one(packed):
    """The shards hold exactly the split `vitkit train` makes from the same spec and seed."""
    out, index = packed
    plain = build_data(build_config(overrides=["data.spec=digits"]).data, build_config().aug, (8, 8), None, 0)
    spec = f"shards:{out}/{index['splits']['train']['pattern']}"
    streamed = build_data(build_config(overrides=[f"data.spec={spec}"]).data, build_config().aug, (8, 8), None, 0)
    assert streamed.train_size == len(plain.train)
    assert (streamed.val.split.labels == plain.val.split.labels).all()
    assert torch.equal(streamed.test[5][0], plain.test[5][0])


@pytest.mark.parametrize("world,workers", [(2, 2), (1, 2), (3, 1)])
def test_every_sample_is_read_exactly_once_across_processes_and_workers(packed, world, workers):
    out, index = packed
    shards, _ = open_shards(f"{out}/{index['splits']['train']['pattern']}")
    seen = []
    for rank in range(world):
        stream = ShardStream(shards, lambda img, epoch, key: torch.tensor([key]), batch_size=16, rank=rank,
                             world_size=world, workers=workers, drop_last=False, buffer=50)
        loader = DataLoader(stream, batch_size=None, num_workers=workers, multiprocessing_context="fork")
        seen += [int(k) for b in loader for k in b["x"].flatten()]
    assert len(seen) == len(shards) and len(set(seen)) == len(shards)


def test_the_stream_reshuffles_each_epoch_and_replays_an_epoch_exactly(packed):
    out, index = packed
    shards, _ = open_shards(f"{out}/{index['splits']['train']['pattern']}")
    stream = ShardStream(shards, lambda img, epoch, key: torch.tensor([key]), batch_size=1000, drop_last=False)

    def order(epoch):
        stream.epoch = epoch
        return torch.cat([b["x"].flatten() for b in stream]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))


def test_training_streams_shards_with_workers(packed, tmp_path):
    out, index = packed
    cfg = build_config("digits", [f"data.spec=shards:{out}/{index['splits']['train']['pattern']}",
                                  "data.num_workers=2", "train.epochs=1", "train.tensorboard=false",
                                  f"train.out={tmp_path / 'run'}", "model.depth=1", "model.embed_dim=32",
                                  "model.mlp_dim=64"])
    summary = train(cfg, progress=False)
    assert summary["status"] == "completed" and summary["test_count"] == sum(index["splits"]["test"]["counts"])


def test_broken_shards_and_missing_index_are_named(packed, tmp_path):
    out, index = packed
    with pytest.raises(VitkitError, match=r"train-000009.tar not found \(91 of 100 missing\)"):
        open_shards(f"{out}/train-{{000000..000099}}.tar")
    lone = tmp_path / "lone-000000.tar"
    lone.write_bytes((out / "train-000000.tar").read_bytes())
    with pytest.raises(VitkitError, match="index.json not found"):
        open_shards(str(lone))
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "index.json").write_text((out / "index.json").read_text())
    for name in ("val-000000.tar", "test-000000.tar", "test-000001.tar", "test-000002.tar"):
        if (out / name).exists():
            (cut / name).write_bytes((out / name).read_bytes())
    data = (out / "train-000000.tar").read_bytes()
    (cut / "train-000000.tar").write_bytes(data[:len(data) // 2 + 100])
    shards, _ = open_shards(str(cut / "train-000000.tar"))
    with pytest.raises(VitkitError, match="train-000000.tar: truncated or corrupt"):
        list(ShardStream(shards, lambda img, epoch, key: img, batch_size=8))
