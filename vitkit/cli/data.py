"""`vitkit data pack`: a data spec as WebDataset tar shards for streaming."""

from __future__ import annotations

import argparse
import sys

from .common import data_flag


def _pack(args: argparse.Namespace) -> None:
    from ..data.pack import pack

    index = pack(args.data, args.out, args.shard_size, args.val_fraction, args.test_fraction, args.seed,
                 args.download, progress=sys.stderr.isatty())
    for name, info in index["splits"].items():
        print(f"{name}: {sum(info['counts']):,} samples in {len(info['counts'])} shards -> {args.out}/{info['pattern']}")
    if index["skipped"]:
        print(f"left out {len(index['skipped'])} unreadable images, e.g. {index['skipped'][0]}")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data tools: pack a dataset into WebDataset tar shards",
                       description="Data tools. `vitkit data pack` writes train/val/test shards (split exactly as "
                                   "`vitkit train` splits the spec) for streaming with --data shards:PATTERN.")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = actions.add_parser("pack", help="write WebDataset tar shards (KEY.png, KEY.cls, KEY.json) and index.json",
                           description="Read a data spec and write OUT/{train,val,test}-NNNNNN.tar with up to "
                                       "--shard-size samples each (PNG image, integer label, JSON with the class "
                                       "name and source file), plus OUT/index.json (classes, per-shard counts). "
                                       "Train on them with --data 'shards:OUT/train-{000000..000NNN}.tar'.")
    data_flag(q)
    q.add_argument("--out", required=True, metavar="DIR", help="output folder (must not hold shards already)")
    q.add_argument("--shard-size", type=int, default=10_000, metavar="N", help="samples per shard (default 10000)")
    q.add_argument("--val-fraction", type=float, default=0.1,
                   help="held out of train for validation when the source has no val split (default 0.1)")
    q.add_argument("--test-fraction", type=float, default=0.2,
                   help="held out for testing when the source has no test split (default 0.2)")
    q.add_argument("--seed", type=int, default=0, help="seed of the val split (use the training seed; default 0)")
    q.add_argument("--download", action="store_true", help="fetch the dataset first (mnist, cifar10, cifar100)")
    q.set_defaults(func=_pack)
