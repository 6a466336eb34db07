"""Accuracy benchmark: train a shipped preset (several seeds if asked) and record test accuracy and
wall time, as JSON and a markdown row for the README.

    python benchmarks/train_accuracy.py --config digits --seeds 0,1,2
    python benchmarks/train_accuracy.py --config mnist
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from vitkit.config import build_config
from vitkit.runtime import tune_allocator
from vitkit.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="digits", help="preset name or YAML file")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value overrides")
    ap.add_argument("--out", default="benchmarks/results", help="where runs and results go")
    args = ap.parse_args()
    tune_allocator()  # as `vitkit train` does
    out = Path(args.out)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run_dir = out / f"{Path(args.config).stem}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        cfg = build_config(args.config, [f"train.seed={seed}", f"train.out={run_dir}", "train.tensorboard=false"]
                           + args.set)
        s = train(cfg, progress=False)
        rows.append({"seed": seed, "test_acc": s["test_acc"], "best_val_acc": s["best_val_acc"],
                     "wall_time_s": s["wall_time_s"], "train_time_s": s["train_time_s"], "img_s": s["img_s"],
                     "epochs": s["epochs"], "run_dir": str(run_dir)})
        print(json.dumps(rows[-1]), flush=True)
    accs = [r["test_acc"] for r in rows]
    result = {
        "config": args.config, "overrides": args.set, "runs": rows,
        "test_acc_mean": statistics.mean(accs), "test_acc_min": min(accs), "test_acc_max": max(accs),
        "wall_time_s_max": max(r["wall_time_s"] for r in rows),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}, python {sys.version.split()[0]}",
        "date": time.strftime("%Y-%m-%d"),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"accuracy-{Path(args.config).stem}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"| {args.config} | {len(rows)} | {100 * result['test_acc_mean']:.2f}% "
          f"({100 * min(accs):.2f}-{100 * max(accs):.2f}) | {result['wall_time_s_max']:.0f} s |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
