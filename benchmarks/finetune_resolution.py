"""The paper's recipe at small scale: pre-train at low resolution, fine-tune at a higher one with a new
zero-initialised head and 2D-resampled position embeddings; report test accuracy before and after.

    python benchmarks/finetune_resolution.py --init RUN_DIR --data mnist:../shared/data/mnist --img-size 42
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vitkit.config import build_config
from vitkit.evaluate import evaluate_checkpoint
from vitkit.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="pre-trained run folder or weights")
    ap.add_argument("--data", required=True, help="data spec")
    ap.add_argument("--img-size", type=int, default=42, help="fine-tuning resolution")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value overrides")
    ap.add_argument("--out", default="benchmarks/results", help="where the run and results go")
    args = ap.parse_args()
    out = Path(args.out)
    before = evaluate_checkpoint(args.init, args.data)
    run_dir = out / f"finetune{args.img_size}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = build_config("vit_finetune", [
        f"train.init={args.init}", f"data.spec={args.data}", f"model.img_size={args.img_size}",
        f"train.epochs={args.epochs}", f"optim.lr={args.lr}", "train.batch_size=128", "aug.random_resized_crop=false",
        "aug.hflip=false", f"aug.crop_padding={max(1, args.img_size // 14)}", "data.val_fraction=0.05",
        f"train.out={run_dir}", "train.tensorboard=false"] + args.set)
    summary = train(cfg, progress=False)
    result = {"init": args.init, "data": args.data, "img_size": args.img_size, "epochs": args.epochs, "lr": args.lr,
              "before_test_acc": before["top1"], "after_test_acc": summary["test_acc"],
              "finetune_wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"finetune-{args.img_size}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"| {before['top1'] * 100:.2f}% at native size | {summary['test_acc'] * 100:.2f}% at {args.img_size} px "
          f"| {summary['wall_time_s']:.0f} s |")


if __name__ == "__main__":
    main()
