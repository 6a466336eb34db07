"""Where images come from: each source yields uint8 images, integer labels and class names.

In-memory sources (digits, IDX, CIFAR, synthetic) hold a (N, C, H, W) uint8 tensor; an image folder
holds file paths and decodes on access (in DataLoader workers).
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import shutil
import struct
import tarfile
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import rng
from ..errors import VitkitError
from ..files import atomic_write
from .images import IMAGE_EXTENSIONS, load_image


@dataclass
class Split:
    """One split of a dataset: either `images` (N, C, H, W uint8) or `paths`, plus labels."""

    labels: Tensor
    images: Tensor | None = None
    paths: list[str] | None = None
    blobs: list[tuple[str, int, int]] | None = None  # (file, offset, size): images stored inside tar shards

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Tensor) -> "Split":
        pick = idx.tolist()
        return Split(self.labels[idx], None if self.images is None else self.images[idx],
                     None if self.paths is None else [self.paths[i] for i in pick],
                     None if self.blobs is None else [self.blobs[i] for i in pick])

    def typical_size(self, sample: int = 200) -> tuple[int, int] | None:
        """The median (height, width) of the images, from the headers of up to `sample` evenly spaced
        files (no decoding); None when no file could be read."""
        if self.images is not None:
            return tuple(self.images.shape[-2:]) if len(self.images) else None
        if not self.paths:
            return None
        import io

        from PIL import Image

        def source(i: int):
            return self.paths[i] if self.blobs is None else io.BytesIO(read_blob(self.blobs[i]))

        sizes = []
        for i in range(0, len(self.paths), max(1, len(self.paths) // sample))[:sample]:
            try:
                with Image.open(source(i)) as im:
                    sizes.append((im.height, im.width))
            except (OSError, ValueError):
                continue
        if not sizes:
            return None
        hs, ws = sorted(h for h, _ in sizes), sorted(w for _, w in sizes)
        return hs[len(hs) // 2], ws[len(ws) // 2]


def read_blob(blob: tuple[str, int, int]) -> bytes:
    """The bytes of an image stored inside a tar shard: (file, offset, size)."""
    path, offset, size = blob
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


@dataclass
class Source:
    train: Split
    test: Split | None
    classes: list[str]
    in_chans: int
    val: Split | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable files, by name


# --- scikit-learn digits -------------------------------------------------------------------------
def load_digits() -> Source:
    """scikit-learn's bundled 8x8 digits (1,797 images, offline): the built-in default data.
    Split like the common 80/20 protocol with a fixed seed."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=rng.generator(0, "split", rng.SPLIT_DIGITS))
    n_test = len(labels) // 5
    test, train = perm[:n_test], perm[n_test:]
    return Source(Split(labels[train], images[train]), Split(labels[test], images[test]),
                  [str(i) for i in range(10)], 1)


# --- MNIST-format IDX files ------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or .gz): magic 0x0000TTDD, DD dimension sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise VitkitError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise VitkitError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims))
    body = data[4 + 4 * ndim:]
    if len(body) < count * dtype.itemsize:
        raise VitkitError(f"{path} is truncated: header says {dims}, file holds {len(body)} bytes of data")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise VitkitError(f"{root}: missing {stem}[.gz] (expected the standard MNIST file names)")


def load_idx_dir(root: str | Path) -> Source:
    """Any MNIST-format set: train-/t10k- images and labels, raw or gzipped."""
    root = _existing_dir(root)
    split = {}
    for name, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise VitkitError(f"{root}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        split[name] = Split(torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(images.astype(np.uint8))[:, None])
    n = int(max(split["train"].labels.max(), split["test"].labels.max())) + 1
    return Source(split["train"], split["test"], [str(i) for i in range(n)], 1)


# --- CIFAR python batches ---------------------------------------------------------------------------
def load_cifar(root: str | Path, fine: bool = False) -> Source:
    """CIFAR-10 (`data_batch_1..5`, `test_batch`) or CIFAR-100 (`train`, `test`) python-pickle batches.

    These are pickles, so they are read with a restricted unpickler that builds only plain
    containers and numpy arrays: a crafted file cannot run code."""
    root = _existing_dir(root)
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (root / sub).is_dir():
            root = root / sub
    if fine:
        train_files, test_files, key, meta, names = ["train"], ["test"], b"fine_labels", "meta", b"fine_label_names"
    else:
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        key, meta, names = b"labels", "batches.meta", b"label_names"

    def read(files: list[str]) -> Split:
        xs, ys = [], []
        for f in files:
            d = _safe_unpickle(root / f)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return Split(torch.from_numpy(np.concatenate(ys)), torch.from_numpy(np.concatenate(xs)))

    classes = [c.decode() for c in _safe_unpickle(root / meta)[names]]
    return Source(read(train_files), read(test_files), classes, 3)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _safe_unpickle(path: Path) -> dict:
    if not path.is_file():
        raise VitkitError(f"missing CIFAR batch file {path}")
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise VitkitError(f"cannot read CIFAR batch {path}: {e}") from None


# --- image folders ----------------------------------------------------------------------------------
def _class_folder(root: Path, classes: list[str] | None = None) -> tuple[Split, list[str]]:
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
        if not classes:
            raise VitkitError(f"{root} has no class sub-folders (expected one folder per class)")
    elif set(found) - set(classes):
        raise VitkitError(f"{root}: classes {sorted(set(found) - set(classes))} are not in the training split")
    paths, labels = [], []
    for i, c in enumerate(classes):
        d = root / c
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) \
            if d.is_dir() else []
        if not files and d.is_dir():
            raise VitkitError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths += [str(p) for p in files]
        labels += [i] * len(files)
    return Split(torch.tensor(labels, dtype=torch.int64), paths=paths), classes


def load_folder(root: str | Path, in_chans: int | None = None) -> Source:
    """`root/<class>/*.png`, or `root/{train,val,test}/<class>/...` for explicit splits."""
    root = _existing_dir(root)
    if (root / "train").is_dir():
        train, classes = _class_folder(root / "train")
        val = _class_folder(root / "val", classes)[0] if (root / "val").is_dir() else None
        test = _class_folder(root / "test", classes)[0] if (root / "test").is_dir() else None
    else:
        (train, classes), val, test = _class_folder(root), None, None
    if in_chans is None:  # from the first readable image: grayscale stays one channel
        for p in train.paths[:50]:
            try:
                in_chans = 1 if load_image(p).mode == "L" else 3
                break
            except VitkitError:
                continue
        else:
            raise VitkitError(f"{root}: none of the first images could be read")
    return Source(train, test, classes, in_chans, val=val)


# --- synthetic ---------------------------------------------------------------------------------------
def load_synthetic(n_train: int = 2000, n_test: int = 500, size: int = 16, classes: int = 4, chans: int = 1,
                   seed: int = 0) -> Source:
    """A learnable toy task: each class is a bright square in its own quadrant-sized region, with noise."""
    g = rng.generator(seed, "synthetic")

    def make(n: int) -> Split:
        labels = torch.randint(0, classes, (n,), generator=g)
        img = torch.rand(n, chans, size, size, generator=g) * 60
        half = size // 2
        for i, c in enumerate(labels.tolist()):
            r, col = divmod(c % 4, 2)
            img[i, :, r * half:(r + 1) * half, col * half:(col + 1) * half] += 150 + 40 * (c // 4)
        return Split(labels, img.clamp(0, 255).to(torch.uint8))

    return Source(make(n_train), make(n_test), [f"class{i}" for i in range(classes)], chans)


# --- downloads -----------------------------------------------------------------------------------------
# MNIST: sha256 of the *decompressed* IDX files, so that a mirror's re-compression still verifies.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# CIFAR: the MD5s the dataset's authors publish for the archives.
CIFAR_ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def checksum(path: Path, algorithm: str = "sha256", decompress: bool = False) -> str:
    h = hashlib.new(algorithm)
    with (gzip.open if decompress else open)(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _matches(path: Path, expected: str, decompress: bool) -> bool:
    algorithm = "md5" if len(expected) == 32 else "sha256"
    try:
        return checksum(path, algorithm, decompress) == expected
    except (OSError, EOFError):
        return False


def fetch(url: str, dest: Path, expected: str, decompress: bool = False) -> Path:
    """Download to a temporary name, verify the checksum, then move into place (never a half file)."""
    if dest.is_file() and _matches(dest, expected, decompress):
        return dest

    def write(tmp: str) -> None:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise VitkitError(f"download of {url} failed: {e}") from None
        verify(Path(tmp), dest, expected, decompress)

    atomic_write(dest, write)
    return dest


def verify(tmp: Path, dest: Path, expected: str, decompress: bool = False) -> None:
    """A download that does not match its recorded checksum never takes `dest`'s place."""
    if not _matches(tmp, expected, decompress):
        raise VitkitError(f"checksum mismatch for {dest.name}: the download is corrupt or not the expected file")


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract members that stay inside `dest` (no absolute paths, no '..', no links)."""
    base = dest.resolve()
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            if base not in target.parents and target != base or m.issym() or m.islnk():
                raise VitkitError(f"{archive}: unsafe member {m.name!r}")
        tar.extractall(dest)


def download(name: str, root: str | Path) -> None:
    """Fetch a public dataset into `root` with checksum verification."""
    root = Path(root)
    if name == "mnist":
        for fname, digest in MNIST_FILES.items():
            fetch(MNIST_MIRROR + fname, root / fname, digest, decompress=True)
    elif name in CIFAR_ARCHIVES:
        url, digest = CIFAR_ARCHIVES[name]
        extract_tar(fetch(url, root / url.rsplit("/", 1)[1], digest), root)
    else:
        raise VitkitError(f"--download is not available for '{name}' (mnist, cifar10, cifar100 only)")


def _existing_dir(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise VitkitError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise VitkitError(f"{root} is not a directory")
    if not any(root.iterdir()):
        raise VitkitError(f"data directory {root} is empty")
    return root


def warn_skipped(skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable image(s): {shown}", stacklevel=2)
