"""Writing a data spec as WebDataset shards (`vitkit data pack`), split exactly as `vitkit train` splits
it, each shard and the index written atomically; `vitkit.data.shards` reads them."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from torch import Tensor

from ..errors import VitkitError
from ..files import atomic_path, atomic_write_text
from .images import read_image
from .shards import INDEX
from .sources import Split


def _brace_range(prefix: str, n: int) -> str:
    return f"{prefix}-{{{0:06d}..{n - 1:06d}}}.tar" if n > 1 else f"{prefix}-000000.tar"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _png(img: Tensor) -> bytes:
    arr = img.numpy()
    pil = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(np.transpose(arr, (1, 2, 0)), "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def write_shards(split: Split, in_chans: int, classes: list[str], out: Path, prefix: str, shard_size: int,
                 progress: bool = False) -> tuple[list[int], list[str]]:
    """Write `split` as `out/prefix-NNNNNN.tar`, each shard complete or absent (vitkit.files.atomic_path).
    Returns the per-shard counts and the names of unreadable images left out."""
    from tqdm import tqdm

    skipped: list[str] = []

    def readable() -> Iterator[tuple[int, Tensor]]:
        for i in tqdm(range(len(split)), desc=f"pack {prefix}", unit="img", disable=not progress):
            try:
                yield i, split.images[i] if split.images is not None else read_image(split.paths[i], in_chans)
            except VitkitError:
                skipped.append(split.paths[i])

    samples, counts = readable(), []
    while chunk := list(itertools.islice(samples, shard_size)):
        with atomic_path(out / f"{prefix}-{len(counts):06d}.tar") as tmp, tarfile.open(tmp, "w") as tar:
            for i, img in chunk:
                key, label = f"{i:08d}", int(split.labels[i])
                _add(tar, f"{key}.png", _png(img))
                _add(tar, f"{key}.cls", str(label).encode())
                meta = {"class": classes[label]}
                if split.paths is not None:
                    meta["source"] = split.paths[i]
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        counts.append(len(chunk))
    return counts, skipped


def pack(spec: str, out: str | Path, shard_size: int = 10_000, val_fraction: float = 0.1, test_fraction: float = 0.2,
         seed: int = 0, download: bool = False, progress: bool = False) -> dict:
    """Write train/val/test shards of a data spec, split as `vitkit train` splits it, and index.json."""
    from ..config import AugConfig, DataConfig
    from .datasets import build_data

    if shard_size < 1:
        raise VitkitError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out)
    if (out / INDEX).exists():
        raise VitkitError(f"{out} already holds shards ({INDEX}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    data = build_data(DataConfig(spec=spec, val_fraction=val_fraction, test_fraction=test_fraction, download=download),
                      AugConfig(), (1, 1), None, seed)
    index = {"format": "webdataset", "fields": ["png", "cls", "json"], "classes": data.classes,
             "in_chans": data.pre.in_chans, "source": spec, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
             "splits": {}}
    skipped = list(data.skipped)
    for name, ds in (("train", data.train), ("val", data.val), ("test", data.test)):
        if name == "val" and ds is data.test:
            continue
        counts, bad = write_shards(ds.split, data.pre.in_chans, data.classes, out, name, shard_size, progress)
        skipped += bad
        index["splits"][name] = {"pattern": _brace_range(name, len(counts)), "counts": counts}
    index["skipped"] = skipped
    atomic_write_text(out / INDEX, json.dumps(index, indent=2))
    return index


