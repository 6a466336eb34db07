"""Predictions for image files with exactly the preprocessing stored in the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data.images import read_image
from .errors import VitkitError
from .load import load


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None   # (class, probability), best first
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": c, "prob": round(p, 6)} for c, p in self.top]}


@torch.inference_mode()
def predict(checkpoint: str | Path, images: list[str | Path], top_k: int = 5, batch_size: int = 64,
            device: str = "cpu", compile: bool = False, precision: str = "auto",
            runtime: str = "auto") -> list[Prediction]:
    """Top-k classes for each image; an unreadable file gets an error entry and the rest go on."""
    if top_k < 1:
        raise VitkitError(f"top-k must be at least 1, got {top_k}")
    loaded = load(checkpoint, device, runtime)
    pre, classes = loaded.preprocess, loaded.classes
    model = loaded.for_inference(precision, compile, runtime).model
    results: list[Prediction] = []
    ready: list[tuple[int, torch.Tensor]] = []
    for path in images:
        try:
            ready.append((len(results), pre.eval(read_image(path, pre.in_chans))))
            results.append(Prediction(str(path)))
        except VitkitError as e:
            results.append(Prediction(str(path), error=str(e)))
    k = min(top_k, len(classes))
    for start in range(0, len(ready), batch_size):
        chunk = ready[start:start + batch_size]
        probs = model(torch.stack([x for _, x in chunk]).to(device)).float().softmax(-1)
        p, idx = probs.topk(k, dim=-1)
        for (i, _), pi, ii in zip(chunk, p.tolist(), idx.tolist()):
            results[i].top = [(classes[c], v) for c, v in zip(ii, pi)]
    return results
