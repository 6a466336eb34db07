"""glibc malloc thresholds (`vitkit.runtime.tune_allocator`, applied by every `vitkit` command) against
glibc's defaults, each in fresh processes, alternating, for several rounds.

    python benchmarks/allocator.py --rounds 3

Each child process builds one model, warms up, and times one cell (inference at batch 1 or 32,
or a training step at batch 32: forward + backward + AdamW), either with the default allocator or
after `tune_allocator()`. A fresh process per timing matters: glibc adapts its mmap threshold to what
the process did before, which is the effect being measured. Inference children also time the same
batch cut in halves run by two Python threads with one intra-op thread each (the "batch split"),
whose apparent gain in an earlier prototype turned out to be this allocator effect.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from common import MODES, model_name, rate


def child(name: str, cell: str, tuned: bool, seconds: float) -> dict:
    if tuned:
        from vitkit.runtime import tune_allocator
        assert tune_allocator(), "tune_allocator did not apply"
    import torch
    import torch.nn.functional as F

    from vitkit.models import create_model
    train, batch = MODES[cell]
    torch.manual_seed(0)
    model = create_model(name)
    c = model.cfg
    x = torch.randn(batch, c.in_chans, *c.img_size)
    out = {}
    if train:
        y = torch.randint(0, c.num_classes, (batch,))
        opt = torch.optim.AdamW(model.parameters(), fused=True)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        step()
        out["whole"] = rate(step, batch, seconds, min_runs=2)
        return out
    model.eval().requires_grad_(False)
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(max(threads - 1, 1))

    def whole():
        with torch.inference_mode():
            model(x)

    def half(part):
        torch.set_num_threads(1)
        with torch.inference_mode():
            return model(part)

    def split():
        torch.set_num_threads(1)
        parts = x.tensor_split(threads)
        rest = [pool.submit(half, p) for p in parts[1:]]
        torch.cat([half(parts[0])] + [f.result() for f in rest])
        torch.set_num_threads(threads)
    whole()
    out["whole"] = rate(whole, batch, seconds, min_runs=2)
    if batch > 1 and threads > 1:
        split()
        out["split"] = rate(split, batch, seconds, min_runs=2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mnist,s16", help="comma-separated keys (mnist, ti16, s16, b16) or names")
    ap.add_argument("--cells", default="infer_b1,infer_b32,train_b32", help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (two child processes each)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "CELL", "TUNED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, cell, tuned = args.child
        print(json.dumps(child(name, cell, tuned == "1", args.seconds)))
        return
    results = {}
    for key in args.models.split(","):
        name = model_name(key)
        for cell in args.cells.split(","):
            runs: dict[str, list[dict]] = {"default": [], "tuned": []}
            for r in range(args.rounds):
                for variant in (("default", "tuned") if r % 2 == 0 else ("tuned", "default")):
                    cmd = [sys.executable, __file__, "--child", name, cell, "1" if variant == "tuned" else "0",
                           "--seconds", str(args.seconds)]
                    runs[variant].append(json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                                                   check=True).stdout.splitlines()[-1]))
            ratio = [t["whole"] / d["whole"] for d, t in zip(runs["default"], runs["tuned"])]
            row = {"tuned_over_default": statistics.median(ratio), "min": min(ratio), "max": max(ratio),
                   "default_img_s": statistics.median(d["whole"] for d in runs["default"]),
                   "tuned_img_s": statistics.median(t["whole"] for t in runs["tuned"])}
            if "split" in runs["default"][0]:
                for v in runs:
                    row[f"split_over_whole_{v}"] = statistics.median(p["split"] / p["whole"] for p in runs[v])
            results[f"{key} {cell}"] = row
            print(f"{key} {cell}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) and v < 50 else f"{k} {v:.0f}"
                                                for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
