"""What the benchmark scripts share: the model table, the timing loop, the CPU description every
result records, and seeded random checkpoints. Scripts import this module, never each other."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

# Short keys on the command line (--models mnist,s16) -> registered model names.
MODELS = {"mnist": "vit_mnist_patch7_28", "ti16": "vit_tiny_patch16_224", "s16": "vit_small_patch16_224",
          "b16": "vit_base_patch16_224"}
# mode -> (training?, batch size)
MODES = {"infer_b1": (False, 1), "infer_b32": (False, 32), "train_b32": (True, 32)}


def model_name(key: str) -> str:
    return MODELS.get(key, key)


def cpu_description() -> str:
    """Model name and the SIMD flags that matter (a virtual machine shows what its host lets through)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    simd = [f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f]
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name}; SIMD: {' '.join(sorted(simd)) or 'none listed'}; torch sees {capability}"


def rate(step: Callable[[], object], batch: int, min_seconds: float, min_runs: int = 1) -> float:
    """Images per second of `step` (one call = `batch` images) over at least `min_seconds` and `min_runs`."""
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and n >= min_runs:
            return n * batch / elapsed


@dataclass
class Cell:
    """One timed thing: a step and the images it handles."""
    step: Callable[[], None]
    batch: int


def time_cell(cell: Cell, min_seconds: float) -> float:
    return rate(cell.step, cell.batch, min_seconds)


def random_checkpoint(name: str, path: Path) -> Path:
    """A checkpoint of the registered model `name` with seeded random weights (speed measurements only)."""
    from vitkit.checkpoint import model_meta, save_weights
    from vitkit.data.transforms import Preprocess
    from vitkit.models import create_model

    torch.manual_seed(0)
    model = create_model(name)
    torch.nn.init.normal_(model.head.weight, std=0.02)   # a zero head would make every logit equal
    c = model.cfg
    meta = model_meta(model, preprocess=Preprocess(c.img_size, c.in_chans, (0.5,) * c.in_chans,
                                                   (0.5,) * c.in_chans).to_dict())
    save_weights(path, model, meta)
    return path


def checkpoint_for(key: str, run: str | None, tmp: Path) -> Path:
    """The trained MNIST run for the `mnist` row (accuracy needs real weights), else a random checkpoint."""
    if key == "mnist":
        if not run:
            raise SystemExit("--checkpoint RUN_DIR (a trained MNIST run) is needed for the mnist row")
        return Path(run)
    return random_checkpoint(model_name(key), tmp / f"{key}.safetensors")
