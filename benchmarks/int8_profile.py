"""Where an int8 file's time goes: onnxruntime's own profiler, kernel time summed per operator type.

    python benchmarks/int8_profile.py --checkpoint RUN_DIR --models mnist,s16

Exports each model as `vitkit export --format int8` does (fused attention), runs batches of 32 on
both threads with profiling on, and prints each operator type's share of the summed kernel time.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from int8 import checkpoint_for
from vitkit.export import export_int8


def kernel_shares(path: Path, x: torch.Tensor, runs: int, threads: int, prefix: Path) -> dict[str, float]:
    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, threads
    options.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"images": x.numpy()})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {op: t / total for op, t in per_op.most_common()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="trained MNIST run or file (for the mnist row)")
    ap.add_argument("--models", default="mnist,s16", help="comma-separated: mnist, ti16, s16, b16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20, help="profiled runs per model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    for key in args.models.split(","):
        path = tmp / f"{key}.int8.onnx"
        exported = export_int8(checkpoint_for(key, args.checkpoint, tmp), path, check=False)
        x = torch.randn(args.batch, *exported["input"][1:])  # (batch, channels, height, width)
        shares = kernel_shares(path, x, args.runs, args.threads, tmp / key)
        print(f"{key}: " + ", ".join(f"{op} {100 * s:.1f}%" for op, s in shares.items() if s >= 0.005))


if __name__ == "__main__":
    main()
