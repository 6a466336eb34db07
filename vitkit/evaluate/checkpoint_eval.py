"""`vitkit eval`: a checkpoint on a data split, with the checkpoint's own preprocessing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import AugConfig, DataConfig
from ..data.datasets import ImageDataset, build_data, make_loader
from ..errors import VitkitError
from ..load import load
from .accuracy import evaluate, plot_confusion


def evaluate_checkpoint(checkpoint: str | Path, data: str, split: str = "test", out: str | Path | None = None,
                        batch_size: int = 256, device: str = "cpu", workers: int = 0, seed: int = 0,
                        compile: bool = False, precision: str = "auto", runtime: str = "auto") -> dict[str, Any]:
    """Top-1/top-5, per-class accuracy and confusion matrix; written to OUT/eval.json and OUT/confusion.png.
    `compile` compiles the model with frozen weights first (pays on large test sets)."""
    if split not in ("train", "val", "test"):
        raise VitkitError(f"unknown split '{split}' (train, val, test)")
    loaded = load(checkpoint, device, runtime)
    pre = loaded.preprocess
    ready = loaded.for_inference(precision, compile, runtime)
    bundle = build_data(DataConfig(spec=data), AugConfig(), pre.img_size, pre.in_chans, seed)
    classes = loaded.meta.get("classes") or bundle.classes
    if list(classes) != list(bundle.classes):
        raise VitkitError(f"the checkpoint's classes {classes[:5]}... differ from {data}'s {bundle.classes[:5]}...")
    source = getattr(bundle, split)
    ds = ImageDataset(source.split, pre, None, seed, strict=False)  # the checkpoint's preprocessing, no augmentation
    ev = evaluate(ready.model, make_loader(ds, batch_size, workers), len(classes), device)
    result = {"checkpoint": str(checkpoint), "data": data, "split": split, "precision": ready.precision,
              "precision_reason": ready.precision_reason, "runtime": ready.runtime,
              "runtime_reason": ready.runtime_reason, **ev.to_dict(classes)}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result, indent=2))
        plot_confusion(ev.confusion, classes, out / "confusion.png",
                       f"{Path(str(checkpoint)).name} on {data} [{split}]: top-1 {ev.top1:.4f}")
    return result
