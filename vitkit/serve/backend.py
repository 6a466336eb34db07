"""The model behind the server: anything `vitkit.load` loads, ready for inference, with the decoding
and preprocessing its checkpoint prescribes (the rules `vitkit predict` follows)."""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..analysis.attention import Explanation, explain_image
from ..analysis.plots import overlay_image
from ..data.images import check_image, image_to_tensor, load_image
from ..errors import VitkitError
from ..load import load


# Below this many pixels in a batch, decoding is too short to share: a thread hand-off costs about as much.
# The first version shared every batch, and with MNIST-size PNGs (32 x 784 pixels a batch) it served 10%
# fewer images at 64 clients than before (int8 .onnx, AMX Xeon, 2026-12-07, docs/serving.md; that version
# also waited the full --max-wait-ms for stragglers, batcher.REGROUP_SHARE); 224 x 224 JPEGs gain.
PARALLEL_DECODE_PIXELS = 200_000


@dataclass(frozen=True)
class EncodedImage:
    """An image file as a request sent it, checked but not yet decoded."""
    data: bytes
    name: str
    pixels: int  # width x height, from the header


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
        self._decoders: ThreadPoolExecutor | None = None

    def describe(self) -> str:
        return (f"{self.name} ({self.meta.get('model_name', self.meta.get('arch', 'model'))}, {len(self.classes)} "
                f"classes, input {'x'.join(map(str, self.input_shape))}, on {self.runtime}, precision {self.precision})")

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (float32, on the CPU) of a batch of prepared images."""
        return self.model(x.to(self.device)).float().cpu()

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
        return EncodedImage(data, name, check_image(io.BytesIO(data), name))

    def prepare(self, x: torch.Tensor | list[EncodedImage]) -> torch.Tensor:
        """Model inputs of one request (`prepare_all` of one; its error raised)."""
        out = self.prepare_all([x])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def prepare_all(self, requests: list[torch.Tensor | list[EncodedImage]]) -> list[torch.Tensor | Exception]:
        """Each request's model inputs, or the error that preparing it raised (that request's alone: e.g. a
        truncated image, found only by decoding), on the model thread. An FP32 batch comes prepared; image
        files are decoded and preprocessed as `vitkit predict` does it.

        The files of a whole batch are decoded at once, split over the threads the model uses (it waits
        meanwhile, so nothing runs beside it): the model thread decodes one share, helper threads that
        run PIL and numpy only (never a torch kernel, batcher.py) the others. The preprocessing (torch)
        follows on the model thread. Decoding in threads that run beside the model instead is slower
        under load (docs/serving.md)."""
        files = [f for r in requests if not torch.is_tensor(r) for f in r]
        pixels = dict(zip(map(id, files), self._decode_files(files)))
        out: list[torch.Tensor | Exception] = []
        for r in requests:
            if torch.is_tensor(r):
                out.append(r)
                continue
            try:
                out.append(torch.stack([self.pre.eval(_raise_if_error(pixels[id(f)])) for f in r]))
            except Exception as e:  # noqa: BLE001 - that request's 400
                out.append(e)
        return out

    def _decode_files(self, files: list[EncodedImage]) -> list[torch.Tensor | Exception]:
        """Each file's uint8 [C, H, W] pixels or its decoding error; shares of the list on the helper threads
        when there is enough to decode (PARALLEL_DECODE_PIXELS)."""
        parts = min(len(files), torch.get_num_threads())
        if parts < 2 or sum(f.pixels for f in files) < PARALLEL_DECODE_PIXELS:
            return _pixels_or_errors(files, self.pre.in_chans)
        if self._decoders is None:
            self._decoders = ThreadPoolExecutor(parts - 1, thread_name_prefix="vitkit-decode")
        shares = [files[i::parts] for i in range(parts)]
        rest = [self._decoders.submit(_pixels_or_errors, share, self.pre.in_chans) for share in shares[1:]]
        done = [_pixels_or_errors(shares[0], self.pre.in_chans)] + [f.result() for f in rest]
        out: list[torch.Tensor | Exception] = [None] * len(files)  # type: ignore[list-item]
        for i, share in enumerate(done):
            out[i::parts] = share
        return out

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


def _pixels_or_errors(files: list[EncodedImage], in_chans: int) -> list[torch.Tensor | Exception]:
    """uint8 pixels of each file (PIL and numpy: no torch kernel, so any thread may run it), or its error."""
    out: list[torch.Tensor | Exception] = []
    for f in files:
        try:
            out.append(image_to_tensor(load_image(io.BytesIO(f.data), f.name), in_chans))
        except Exception as e:  # noqa: BLE001 - e.g. a truncated image: that request's 400
            out.append(e)
    return out


def _raise_if_error(x: torch.Tensor | Exception) -> torch.Tensor:
    if isinstance(x, Exception):
        raise x
    return x


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
