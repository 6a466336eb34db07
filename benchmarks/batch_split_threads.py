"""Batch-split threading against the whole batch on all intra-op threads, round-robin in one process.

    python benchmarks/batch_split_threads.py --models mnist,ti16,s16,b16 --rounds 4

For each model: inference at batch 32 (`SplitBatch` vs the plain model) and a training step at batch 32
(forward + backward + AdamW; `split_backward` vs one backward of the whole batch). Each round times
both in turn; the split's speed over the whole batch is printed per round and as the median. This is
the measurement behind `vitkit.models.batch_split.SPLIT_MAX_PARAMS` and the trainer's
`train.batch_split=auto`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from vitkit.config import OptimConfig
from vitkit.models import create_model
from vitkit.models.batch_split import SplitBatch, default_parts, split_backward
from vitkit.train.optim import build_optimizer

MODELS = {"mnist": "vit_mnist_patch7_28", "ti16": "vit_tiny_patch16_224", "s16": "vit_small_patch16_224",
          "b16": "vit_base_patch16_224"}


def rate(fn, batch: int, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def cells(name: str, batch: int) -> dict[str, callable]:
    torch.manual_seed(0)
    model = create_model(name)
    c = model.cfg
    x, y = torch.randn(batch, c.in_chans, *c.img_size), torch.randint(0, c.num_classes, (batch,))
    infer = create_model(name).eval().requires_grad_(False)
    split_infer = SplitBatch(infer)
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-4, weight_decay=0.0))
    params = [p for p in model.parameters() if p.requires_grad]

    def forward(xs, ys):
        logits = model(xs)
        return logits, F.cross_entropy(logits, ys)

    def train_whole():
        opt.zero_grad(set_to_none=True)
        forward(x, y)[1].backward()
        opt.step()

    def train_split():
        opt.zero_grad(set_to_none=True)
        split_backward(forward, params, x, y, default_parts())
        opt.step()

    def inference(m):
        def run():
            with torch.inference_mode():
                m(x)
        return run
    return {"infer_whole": inference(infer), "infer_split": inference(split_infer),
            "train_whole": train_whole, "train_split": train_split}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mnist,ti16,s16,b16", help="comma-separated keys or registered names")
    ap.add_argument("--batch", type=int, default=32, help="images per batch")
    ap.add_argument("--rounds", type=int, default=4, help="round-robin rounds")
    ap.add_argument("--seconds", type=float, default=1.5, help="minimum seconds per timing")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, split into {default_parts()}")
    results = {}
    for key in args.models.split(","):
        name = MODELS.get(key, key)
        fns = cells(name, args.batch)
        for fn in fns.values():
            fn()  # warm-up
        ratios: dict[str, list[float]] = {"infer": [], "train": []}
        for r in range(args.rounds):
            order = list(fns) if r % 2 == 0 else list(reversed(fns))
            speed = {k: rate(fns[k], args.batch, args.seconds) for k in order}
            for mode in ratios:
                ratios[mode].append(speed[f"{mode}_split"] / speed[f"{mode}_whole"])
            print(f"{key} round {r + 1}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in speed.items()), flush=True)
        results[name] = {m: {"median": statistics.median(v), "min": min(v), "max": max(v)} for m, v in ratios.items()}
        print(f"{key}: split / whole batch: " + ", ".join(
            f"{m} {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})" for m, s in results[name].items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
