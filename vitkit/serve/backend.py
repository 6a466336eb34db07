"""The model behind the server: anything `vitkit.load` loads, ready for inference, with the decoding
and preprocessing its checkpoint prescribes (the rules `vitkit predict` follows)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..analysis.attention import Explanation, explain_image
from ..analysis.plots import overlay_image
from ..data.images import check_image, image_to_tensor, load_image
from ..errors import VitkitError
from ..load import load


@dataclass(frozen=True)
class EncodedImage:
    """An image file as a request sent it, checked but not yet decoded."""
    data: bytes
    name: str


class Backend:
    """One loaded model. Build it, `prepare`, `run` and `explain` on the server's model thread (the
    batcher's: every torch computation happens there, decoding included); `check_image` and
    `check_tensor` use no torch kernels and run on any thread."""

    def __init__(self, source: str | Path, name: str | None = None, device: str = "cpu",
                 precision: str = "auto", runtime: str = "auto"):
        loaded = load(source, device, runtime)
        self.pre, self.classes, self.meta = loaded.preprocess, loaded.classes, loaded.meta
        ready = loaded.for_inference(precision, runtime=runtime)
        self.model, self.precision, self.precision_reason = ready.model, ready.precision, ready.precision_reason
        self.runtime = ready.runtime
        # /explain reads attention probabilities, which only the PyTorch model gives: an OpenVINO-run
        # checkpoint keeps its PyTorch model beside it for that (the weights twice in memory)
        self.attention_model = loaded.model if ready.runtime == "openvino" and ready.model is not loaded.model \
            else self.model
        self.device = torch.device(device)
        self.name = name or default_name(self.meta, source)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise VitkitError(f"model name {self.name!r}: use letters, digits, '_', '.' and '-' (it is part of URLs)")
        self.input_shape = [self.pre.in_chans, *self.pre.img_size]
        self.has_attention = hasattr(self.attention_model, "blocks") and hasattr(self.attention_model, "patch_embed")

    def describe(self) -> str:
        return (f"{self.name} ({self.meta.get('model_name', self.meta.get('arch', 'model'))}, {len(self.classes)} "
                f"classes, input {'x'.join(map(str, self.input_shape))}, on {self.runtime}, precision {self.precision})")

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (float32, on the CPU) of a batch of prepared images."""
        return self.model(x.to(self.device)).float().cpu()

    @property
    def streams(self) -> bool:
        """Whether the model takes its batch image by image (`run_pieces`), running early images while
        later ones are still being decoded."""
        return hasattr(self.model, "run_pieces")

    @torch.inference_mode()
    def run_pieces(self, pieces: Iterator[torch.Tensor], total: int) -> torch.Tensor:
        """Logits (float32) of the prepared images `pieces` yields, about `total` in all (a model that
        `streams`)."""
        return self.model.run_pieces(pieces, total).float()

    def warm_up(self, max_batch_size: int = 2) -> None:
        """The first calls pay for kernel selection and allocation: pay them before `ready`. An OpenVINO
        model compiles its static shapes for one image and for a full batch now (what a loaded server runs
        most), instead of stalling a request later to compile a size that came back."""
        if hasattr(self.model, "pin_shapes"):
            self.model.pin_shapes([(batch, *self.input_shape) for batch in sorted({1, max_batch_size})])
        for batch in (1, 2):
            self.run(torch.zeros(batch, *self.input_shape))

    def check_image(self, data: bytes, name: str) -> "EncodedImage":
        """One encoded image file, checked from its header (empty, not an image, too many pixels: one
        line naming `name`, never a path on this disk) and kept encoded: `prepare` decodes it."""
        if not data:
            raise VitkitError(f"{name}: empty file (0 bytes)")
        check_image(io.BytesIO(data), name)
        return EncodedImage(data, name)

    def prepare(self, x: torch.Tensor | list[EncodedImage]) -> torch.Tensor:
        """Model inputs, on the model thread: an FP32 batch comes prepared; image files are decoded and
        preprocessed as `vitkit predict` does it (errors found only by decoding, e.g. a truncated file,
        fail that request alone). Decoding here rather than in threads of its own is faster under load:
        a decoding thread beside the model's OpenMP threads stalls them (ViT-S/16 at 8 clients:
        0.86-1.37x LitServe with decoding in threads, 1.13-1.26x here; docs/serving.md). Sharing a
        batch's decoding with a helper thread while the model waited saved 4% of that wait (18.9 against
        18.2 ms for 32 JPEGs of 224 x 224, AMX Xeon, 2026-12-07: PIL and numpy hold the GIL for much of
        it), and was not kept."""
        if torch.is_tensor(x):
            return x
        return torch.stack([self._decode(i)[1] for i in x])

    def _decode(self, image: EncodedImage) -> tuple[Image.Image, torch.Tensor]:
        """The decoded image and its preprocessed [C, H, W] model input."""
        decoded = load_image(io.BytesIO(image.data), image.name)
        return decoded, self.pre.eval(image_to_tensor(decoded, self.pre.in_chans))

    def check_tensor(self, x: np.ndarray, name: str) -> torch.Tensor:
        """An FP32 [N, C, H, W] input, checked against the model's fixed input size."""
        if x.ndim != 4 or list(x.shape[1:]) != self.input_shape:
            raise VitkitError(f"input '{name}': shape {list(x.shape)}, expected [N, {', '.join(map(str, self.input_shape))}]")
        if not np.isfinite(x).all():
            raise VitkitError(f"input '{name}': contains NaN or infinity")
        return torch.from_numpy(np.array(x, dtype=np.float32))

    def explain(self, data: bytes, name: str) -> tuple[Explanation, bytes]:
        """The attention rollout of one encoded image, and its overlay on the image as a PNG."""
        if not self.has_attention:
            raise VitkitError(f"model {self.name} has no self-attention to explain (a CNN or an exported file); "
                              "serve a ViT checkpoint for /explain")
        image, x = self._decode(self.check_image(data, name))
        e = explain_image(self.attention_model, x[None].to(self.device))
        buf = io.BytesIO()
        overlay_image(np.asarray(image), e.rollout).save(buf, format="PNG")
        return e, buf.getvalue()


def default_name(meta: dict, source: str | Path) -> str:
    """The registered model name the checkpoint records, else the file's stem: never a directory path."""
    name = meta.get("model_name") or Path(str(source)).stem or "model"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities, in numpy: outside the model thread the server runs no torch kernels (batcher.py)."""
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of the `k` largest along the last axis, best first; ties keep the lower index."""
    idx = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(probs, idx, -1), idx
