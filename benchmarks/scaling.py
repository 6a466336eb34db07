"""One process vs N processes (torchrun + DDP, gloo on CPU) on this machine: training throughput of
each, and whether they end with the same weights (same global batch, same seed, dropout off).

    python benchmarks/scaling.py --nproc 2 --model vit_mnist_patch7_28 --data mnist:../shared/data/mnist

On one 2-core machine the processes share the cores (1 thread each vs 2 threads for one process), so
this measures DDP's overhead, not a speed-up; on several GPUs or machines each process has its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file


def run(out: Path, nproc: int, threads: int, sets: list[str]) -> dict:
    cmd = [sys.executable, "-m", "vitkit", "train", "--out", str(out), "--no-progress"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "vitkit", "train", "--out", str(out), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                   stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    return {"processes": nproc, "threads_per_process": threads, "img_s": summary["img_s"],
            "wall_s": round(time.perf_counter() - t0, 1), "test_acc": summary["test_acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2, help="processes of the DDP run")
    ap.add_argument("--model", default="vit_mnist_patch7_28", help="registered model")
    ap.add_argument("--data", default="mnist:../shared/data/mnist", help="data spec")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128, help="global batch")
    ap.add_argument("--limit-train", type=int, default=10_000, help="training images (0: all)")
    ap.add_argument("--out", default="benchmarks/results", help="where runs and scaling.json go")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(args.out) / f"scaling-{stamp}"
    sets = [f"model.name={args.model}", f"data.spec={args.data}", f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}", f"data.limit_train={args.limit_train}", "train.tensorboard=false",
            "train.deterministic=true", "optim.name=sgd", "optim.lr=0.05", "optim.warmup_epochs=0.2"]
    single = run(root / "one", 1, cores, sets)
    multi = run(root / "ddp", args.nproc, max(cores // args.nproc, 1), sets)
    a = load_file(root / "one" / "checkpoints" / "last.safetensors")
    b = load_file(root / "ddp" / "checkpoints" / "last.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    result = {"model": args.model, "data": args.data, "global_batch": args.batch_size, "cores": cores,
              "one_process": single, "ddp": multi, "max_abs_weight_diff": diff, "date": time.strftime("%Y-%m-%d")}
    (Path(args.out) / "scaling.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"| 1 process x {cores} threads | {single['img_s']:.0f} img/s | test {single['test_acc'] * 100:.2f}% |")
    print(f"| {args.nproc} processes x {multi['threads_per_process']} thread(s) (DDP, gloo) | {multi['img_s']:.0f} img/s "
          f"| test {multi['test_acc'] * 100:.2f}% |")
    print(f"max |weight difference| after training: {diff:.2e}")


if __name__ == "__main__":
    main()
