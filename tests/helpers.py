"""Small data the tests make for themselves."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_mnist_dir(root: Path, n_train: int = 120, n_test: int = 40, gz: bool = True, seed: int = 0) -> Path:
    """An MNIST-format set whose classes are learnable: class c is a bar at row 2c+4."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 6, 4:24] = 250
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return root


def make_image_folder(root: Path, per_class: int = 12, size: int = 16, classes=("cat", "dog", "eel"),
                      mode: str = "RGB") -> Path:
    """One sub-folder per class; class k is a bright band in the k-th third of the image."""
    rng = np.random.default_rng(1)
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            band = size // len(classes)
            arr[k * band:(k + 1) * band] = 230
            img = Image.fromarray(arr, "RGB")
            img.convert(mode).save(d / f"{i:03d}.png")
    return root


def make_hostile_corpus(root: Path, bomb: bool = True) -> dict[str, bool]:
    """Awkward and broken image files; maps each file name to whether it must decode (True) or be
    refused with an error naming it (False)."""
    import io

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), "RGB")
    ok: dict[str, bool] = {}

    def save(name: str, img: Image.Image, good: bool = True, **kw) -> None:
        img.save(root / name, **kw)
        ok[name] = good

    save("plain.png", rgb)
    save("one pixel.png", Image.new("L", (1, 1), 200))
    save("sixteen_bit.png", Image.fromarray((np.arange(400).reshape(20, 20) * 160).astype(np.uint16)))
    save("cmyk.jpg", rgb.convert("CMYK"))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    save("palette_transparent.png", pal)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    save("exif_rotated.jpg", rgb, exif=exif.tobytes())
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    ok["animated.gif"] = True
    save("ünïcödé 名前.png", rgb)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    (root / "empty.png").write_bytes(b"")
    (root / "random_bytes.jpg").write_bytes(rng.integers(0, 255, 3000, dtype=np.uint8).tobytes())
    (root / "text.png").write_text("not an image at all")
    ok.update({n: False for n in ("truncated.png", "truncated.jpg", "empty.png", "random_bytes.jpg", "text.png")})
    if bomb:  # 70 M pixels, above vitkit's 64 M limit; tiny on disk
        Image.new("1", (10_000, 7_000)).save(root / "bomb.png", optimize=True)
        ok["bomb.png"] = False
    return ok


def train_small_digits_run(out: Path, epochs: int) -> Path:
    """A real run folder in seconds: the digits preset with two blocks (what exporting and serving tests load)."""
    from vitkit.config import build_config
    from vitkit.train import train
    train(build_config("digits", [f"train.epochs={epochs}", "model.depth=2", "train.tensorboard=false",
                                  f"train.out={out}"]), progress=False)
    return out
