"""Does masked patch prediction help when labels are scarce? MNIST with 1,000 labelled images.

    python benchmarks/mpp_lowdata.py --data mnist:../shared/data/mnist --labels 1000 --seeds 0,1,2

1. `vitkit pretrain` (masked patch prediction) on the whole training set with its labels unused.
2. For every seed: the same recipe, the same 1,000 labelled images (a stratified draw that depends on
   the seed), the same number of epochs, once from the MPP encoder (fine-tuning: new zero head) and
   once from scratch. Test accuracy of both on the full test set; mean, spread and the per-seed gain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from vitkit.config import build_config
from vitkit.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist:../shared/data/mnist")
    ap.add_argument("--model", default="vit_mnist_patch7_28")
    ap.add_argument("--labels", type=int, default=1000, help="labelled training images (validation included)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pretrain-epochs", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=60, help="epochs over the labelled images, both arms")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default="benchmarks/results/mpp_lowdata")
    args = ap.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    pre = train(build_config("mpp", [f"data.spec={args.data}", f"model.name={args.model}",
                                     f"train.epochs={args.pretrain_epochs}", "data.val_fraction=0.02",
                                     f"train.out={out / 'pretrain'}", "train.tensorboard=false"]), progress=False)
    pretrain_s = time.perf_counter() - t0
    recipe = ["optim.name=adamw", f"optim.lr={args.lr}", "optim.weight_decay=0.05", "optim.warmup_epochs=3",
              "optim.schedule=cosine", "train.batch_size=64", f"train.epochs={args.epochs}", "aug.crop_padding=2",
              f"data.limit_train={args.labels}", "data.val_fraction=0.1", f"data.spec={args.data}",
              "train.tensorboard=false"]
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        row = {"seed": seed}
        for arm in ("scratch", "mpp"):
            extra = [f"model.name={args.model}"] if arm == "scratch" else [f"train.init={out / 'pretrain'}"]
            s = train(build_config("mnist", recipe + extra + [f"train.seed={seed}", f"train.out={out / f'{arm}-s{seed}'}"]),
                      progress=False)
            row[arm] = s["test_acc"]
            row[f"{arm}_train_s"] = s["train_time_s"]
        row["gain_points"] = 100 * (row["mpp"] - row["scratch"])
        runs.append(row)
        print(json.dumps(row), flush=True)
    summary = {arm: {"mean": statistics.mean(r[arm] for r in runs), "std": statistics.pstdev(r[arm] for r in runs),
                     "min": min(r[arm] for r in runs), "max": max(r[arm] for r in runs)} for arm in ("scratch", "mpp")}
    result = {"data": args.data, "model": args.model, "labels": args.labels, "pretrain_epochs": args.pretrain_epochs,
              "pretrain_val_mpp_acc": pre["best_val_mpp_acc"], "pretrain_s": round(pretrain_s, 1),
              "epochs": args.epochs, "runs": runs, "summary": summary, "date": time.strftime("%Y-%m-%d")}
    (out / "mpp_lowdata.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))
    for arm in ("scratch", "mpp"):
        s = summary[arm]
        print(f"| {arm} | {100 * s['mean']:.2f}% ± {100 * s['std']:.2f} ({100 * s['min']:.2f}-{100 * s['max']:.2f}) |")
    print(f"mean gain {statistics.mean(r['gain_points'] for r in runs):+.2f} points; wrote {out / 'mpp_lowdata.json'}")


if __name__ == "__main__":
    main()
