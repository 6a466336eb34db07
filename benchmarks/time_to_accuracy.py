"""Time to accuracy: wall time of a preset's training until its weights first reach a test accuracy.

    python benchmarks/time_to_accuracy.py --config mnist --target 0.99

Trains the preset as `vitkit train` does and, after the last step of every epoch, evaluates the
current weights on the test set (for this measurement only: the run itself still selects on
validation). The clock counts training and the run's own validation, not these extra test passes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vitkit.config import build_config
from vitkit.runtime import tune_allocator
from vitkit.train import train
from vitkit.train.loop import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mnist", help="preset or YAML")
    ap.add_argument("--target", type=float, default=0.99, help="test accuracy to reach (default 0.99)")
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value overrides")
    ap.add_argument("--out", default="benchmarks/results", help="where the run and the JSON go")
    args = ap.parse_args()
    tune_allocator()  # as `vitkit train` does
    run_dir = Path(args.out) / f"tta-{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = build_config(args.config, [f"train.out={run_dir}", "train.tensorboard=false"] + args.set)
    t0 = time.perf_counter()
    excluded = 0.0
    curve: list[dict] = []

    def on_step(tr: Trainer) -> None:
        nonlocal excluded
        if tr.batch_in_epoch != tr.batches_per_epoch:
            return
        t_eval = time.perf_counter()
        wall = t_eval - t0 - excluded
        ev = tr._evaluate(tr.data.test, tr.eval_model())
        excluded += time.perf_counter() - t_eval
        curve.append({"epoch": tr.epoch + 1, "test_acc": ev.top1, "wall_s": round(wall, 1)})
        print(json.dumps(curve[-1]), flush=True)

    summary = train(cfg, progress=False, on_step=on_step)
    reached = next((c for c in curve if c["test_acc"] >= args.target), None)
    result = {"config": args.config, "overrides": args.set, "target": args.target, "curve": curve,
              "reached": reached, "final_test_acc": summary["test_acc"], "date": time.strftime("%Y-%m-%d")}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"time_to_accuracy-{Path(args.config).stem}.json").write_text(json.dumps(result, indent=2))
    if reached:
        print(f"{args.config}: test accuracy {reached['test_acc']:.4f} >= {args.target} after epoch {reached['epoch']}, "
              f"{reached['wall_s']:.0f} s of training")
    else:
        print(f"{args.config}: never reached {args.target} (final {summary['test_acc']:.4f})")


if __name__ == "__main__":
    main()
