"""Decoding image files predictably: any mode PIL opens becomes 8-bit grayscale or RGB.

Rules (documented in the README): EXIF orientation is applied; animated files give their first
frame; 16-bit and 32-bit integer images are scaled to 8 bits; transparency is composited onto
black; CMYK, palette and other modes go through PIL's conversion to RGB or L. Images above
`MAX_PIXELS` are refused (decompression bombs).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..errors import VitkitError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
MAX_PIXELS = 64_000_000


def _open(path: str | Path | BinaryIO, name: str, decode: bool) -> Image.Image | None:
    """Open one image, refuse it above MAX_PIXELS, and (if `decode`) decode it; PIL's errors become one
    line that names `name`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise VitkitError(f"{name}: {img.width}x{img.height} pixels exceeds the limit of {MAX_PIXELS:,}")
                if not decode:
                    return None
                img.seek(0)
                img = ImageOps.exif_transpose(img)
                img.load()
                return img
    except VitkitError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise VitkitError(f"{name}: not a readable image ({type(e).__name__})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise VitkitError(f"{name}: cannot decode image ({e})") from None


def check_image(path: str | Path | BinaryIO, name: str | None = None) -> None:
    """What `load_image` refuses before decoding (not an image, too many pixels), from the file's header
    alone: a server answers those at once and decodes the rest where it suits it (serve/backend.py).
    Errors only found by decoding (a truncated file) come from `load_image`."""
    _open(path, name or str(path), decode=False)


def load_image(path: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """Open, orient and normalise the mode of one image file (or open binary stream) to "L" or "RGB".
    Errors name `name` (default: the path)."""
    return _to_8bit(_open(path, name or str(path), decode=True))


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return Image.fromarray((arr * 255 + 0.5).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        base = "L" if img.mode.startswith("L") else "RGB"
        img = img.convert("RGBA" if base == "RGB" else "LA")
        bg = Image.new(img.mode, img.size, 0)
        return Image.alpha_composite(bg.convert("RGBA"), img.convert("RGBA")).convert(base)
    if img.mode in ("L", "RGB"):
        return img
    if img.mode == "1":
        return img.convert("L")
    return img.convert("RGB")


def image_to_tensor(img: Image.Image, in_chans: int) -> Tensor:
    """(C, H, W) uint8 tensor with the model's channel count (1 or 3)."""
    if in_chans not in (1, 3):
        raise VitkitError(f"images can be read for 1 or 3 input channels, not {in_chans}")
    img = img.convert("L" if in_chans == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    # numpy does the copy: a torch kernel here would start a second OpenMP team in a thread other than
    # the one that runs the model, and two teams on the same cores slow the model's (serve/batcher.py)
    chw = arr[None] if in_chans == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(chw, order="C"))  # a copy: PIL's buffer is read-only


def read_image(path: str | Path | BinaryIO, in_chans: int, name: str | None = None) -> Tensor:
    return image_to_tensor(load_image(path, name), in_chans)
