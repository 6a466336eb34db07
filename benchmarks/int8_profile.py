"""Where an int8 file's time goes, and how much faster int8 matrix multiplies can be on this CPU at all.

    python benchmarks/int8_profile.py --checkpoint RUN_DIR --models mnist,s16

First the CPU (model name, the SIMD extensions that decide which int8 kernels run: AVX-512 VNNI or
AVX-VNNI do 4 int8 products where AVX2 does 2) and onnxruntime's int8 (MatMulInteger, u8 x s8) against
its fp32 matrix multiply on 1024^3, round-robin. Then each model exported as `vitkit export --format
int8` does (fused attention), run on batches of 32 with profiling on: each operator type's share of
the summed kernel time.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from common import checkpoint_for, cpu_description
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


def _matmul_session(int8: bool, n: int, threads: int) -> tuple[ort.InferenceSession, dict]:
    rng = np.random.default_rng(0)
    if int8:
        a, b = rng.integers(0, 255, (n, n), dtype=np.uint8), rng.integers(-127, 127, (n, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        types = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
    else:
        a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        types = TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "matmul", [helper.make_tensor_value_info("a", types[0], [n, n])],
                              [helper.make_tensor_value_info("y", types[2], [n, n])],
                              [onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]), {"a": a}


def matmul_peaks(threads: int, n: int = 1024, rounds: int = 5, seconds: float = 0.5) -> dict[str, float]:
    """Multiply-accumulates per second of onnxruntime's fp32 MatMul and int8 MatMulInteger, in turn per round:
    the most an int8 file can gain in its matrix multiplies on this CPU."""
    sessions = {kind: _matmul_session(kind == "int8", n, threads) for kind in ("fp32", "int8")}
    rates: dict[str, list[float]] = {kind: [] for kind in sessions}
    for _ in range(rounds):
        for kind, (session, feed) in sessions.items():
            session.run(None, feed)
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                session.run(None, feed)
                runs += 1
            rates[kind].append(runs * n ** 3 / (time.perf_counter() - start) / 1e9)
    ratios = [i / f for i, f in zip(rates["int8"], rates["fp32"])]
    return {"fp32_gmac_s": statistics.median(rates["fp32"]), "int8_gmac_s": statistics.median(rates["int8"]),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="trained MNIST run or file (for the mnist row)")
    ap.add_argument("--models", default="mnist,s16", help="comma-separated: mnist, ti16, s16, b16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20, help="profiled runs per model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"CPU: {cpu_description()}")
    for threads in sorted({1, args.threads}):
        p = matmul_peaks(threads)
        print(f"onnxruntime 1024^3, {threads} thread(s): fp32 {p['fp32_gmac_s']:.1f} GMAC/s, "
              f"int8 {p['int8_gmac_s']:.1f} GMAC/s: int8 {p['ratio_median']:.2f}x fp32 "
              f"({p['ratio_min']:.2f}-{p['ratio_max']:.2f}, 5 rounds)")
    tmp = Path(tempfile.mkdtemp())
    for key in args.models.split(","):
        path = tmp / f"{key}.int8.onnx"
        exported = export_int8(checkpoint_for(key, args.checkpoint, tmp), path, check=False)
        x = torch.randn(args.batch, *exported["input"][1:])  # (batch, channels, height, width)
        shares = kernel_shares(path, x, args.runs, args.threads, tmp / key)
        print(f"{key}: " + ", ".join(f"{op} {100 * s:.1f}%" for op, s in shares.items() if s >= 0.005))


if __name__ == "__main__":
    main()
