"""int8 inference against fp32 on this CPU, round-robin in one process, plus the accuracy it costs.

    python benchmarks/int8.py --checkpoint RUN_DIR --data mnist:../shared/data/mnist --models mnist,s16

For each model: PyTorch fp32 as `vitkit eval` runs it (`inference_model`, allocator tuned as every
`vitkit` command does), onnxruntime fp32 (`vitkit export --format onnx`), onnxruntime int8 (`vitkit
export --format int8`: fused attention; run as `vitkit eval` runs it, slices of the batch on
concurrent one-thread sessions, and also as one run on all threads; and exported with `--fuse none`)
and, for reference, PyTorch's own dynamic int8 (`torch.ao.quantization.quantize_dynamic` of the
linear layers, the path the peers document), at batch 32, timed in turn for several rounds; with
`--torchao`, also PyTorch 2 export quantisation (torchao's X86InductorQuantizer: static int8 with scales
calibrated on 512 training images, or on noise for the random-weight models; the patch convolution
stays fp32, which the compiler needs; compiled with frozen weights); with `--openvino`, the OpenVINO IR
and its NNCF int8 form (`vitkit export --format openvino --precision int8`); the table
gives the median per-round speed-up over vitkit's fp32 path and its range. `mnist` uses the trained
checkpoint (and its test accuracy, fp32 against int8, over the whole test set); the 224-px models
use random weights (speed only).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from vitkit.load import load_checkpoint
from vitkit.data.transforms import Preprocess
from vitkit.evaluate import evaluate, evaluate_checkpoint
from vitkit.engines.onnx import OnnxModel
from vitkit.export import export_int8, export_onnx
from vitkit.machine import describe
from vitkit.models.inference import inference_model
from vitkit.runtime import tune_allocator

from common import checkpoint_for, cpu_description, rate

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"  # works from any directory


def torchao_static_int8(model: torch.nn.Module, x: torch.Tensor, calibration: list[torch.Tensor]):
    """PT2E static int8 for x86 (oneDNN int8 kernels, quantise/dequantise fused by the compiler)."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError:
        raise SystemExit("--torchao needs torchao: pip install torchao") from None
    import torch._inductor.config as inductor_config
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    quantizer.set_module_type_qconfig(torch.nn.Conv2d, None)  # a quantised patch conv fails to compile here
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)  # batch fixed: fastest
    with torch.no_grad():
        for c in calibration:
            prepared(c)
    inductor_config.freezing = True
    compiled = torch.compile(convert_pt2e(prepared), dynamic=False)
    with torch.no_grad():
        compiled(x)
    return compiled


@functools.lru_cache(maxsize=None)
def _bundle(data: str, img_size: tuple[int, int], in_chans: int):
    """Read the data spec once: calibration and the accuracy pass both draw from it."""
    from vitkit.config import AugConfig, DataConfig
    from vitkit.data.datasets import build_data
    return build_data(DataConfig(spec=data), AugConfig(), img_size, in_chans, 0)


def split_loader(data: str, meta: dict, split: str, batch: int):
    """Batches of one split of `data` with the checkpoint's own preprocessing, as `vitkit eval` reads them."""
    from vitkit.data.datasets import ImageDataset, make_loader
    pre = Preprocess.from_dict(meta["preprocess"])
    source = getattr(_bundle(data, tuple(pre.img_size), pre.in_chans), split)
    return make_loader(ImageDataset(source.split, pre, None, 0, strict=False), batch, 0)


def calibration_images(key: str, data: str, meta: dict, x: torch.Tensor) -> list[torch.Tensor]:
    if key != "mnist":
        return [torch.randn_like(x) for _ in range(16)]
    batches = iter(split_loader(data, meta, "train", len(x)))
    return [next(batches)["x"] for _ in range(512 // len(x))]


class FixedBatch(torch.nn.Module):
    """A callable compiled for batches of len(filler), run on a smaller last batch by padding it."""

    def __init__(self, fn, filler: torch.Tensor):
        super().__init__()
        self.run, self.filler = fn.__call__, filler  # a bound method: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        return self.run(torch.cat([x, self.filler[:len(self.filler) - n]]) if n < len(self.filler) else x)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="trained MNIST run or file (for the mnist row and its accuracy)")
    ap.add_argument("--data", default=f"mnist:{SHARED_MNIST}", help="data spec of the accuracy check (default: the "
                    "MNIST beside the checkout)")
    ap.add_argument("--models", default="mnist,s16", help="comma-separated: mnist, ti16, s16, b16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per variant per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torchao", action="store_true",
                    help="also time torchao's PT2E static int8, compiled (needs torchao; slow to compile)")
    ap.add_argument("--openvino", action="store_true",
                    help="also time the OpenVINO IR (its own precision choice) and the NNCF int8 IR (calibrated on "
                         "300 training images of --data for mnist, on synthetic images for the random-weight models)")
    ap.add_argument("--out", default="benchmarks/results/int8.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()  # as every `vitkit` command does
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for key in args.models.split(","):
        src = checkpoint_for(key, args.checkpoint, tmp)
        export_onnx(src, tmp / f"{key}.onnx")
        q = export_int8(src, tmp / f"{key}.int8.onnx")   # the default: fused attention
        export_int8(src, tmp / f"{key}.int8-none.onnx", fuse="none")
        model, meta = load_checkpoint(src)
        model = inference_model(model)
        openvino = {}
        if args.openvino:  # the IRs `vitkit export --format openvino [--precision int8 --data ...]` writes
            from vitkit.engines.openvino import OpenVINOModel
            from vitkit.export import export_openvino
            export_openvino(src, tmp / f"{key}.xml")
            export_openvino(src, tmp / f"{key}.int8.xml", "int8", data=args.data if key == "mnist" else "synthetic",
                            calibration_count=300 if key == "mnist" else 64)
            # the fp32 IR as OpenVINO runs it by itself (its own precision, one dynamic-shape compilation)
            openvino = {"openvino": OpenVINOModel(tmp / f"{key}.xml", precision="openvino", static_shapes=False),
                        "openvino_int8": OpenVINOModel(tmp / f"{key}.int8.xml")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice
            torch_int8 = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        variants = {"torch_fp32": model,
                    "onnx_fp32": OnnxModel(tmp / f"{key}.onnx", args.threads),
                    "onnx_int8": OnnxModel(tmp / f"{key}.int8.onnx", args.threads),
                    "onnx_int8_whole": OnnxModel(tmp / f"{key}.int8.onnx", args.threads, split=False),
                    "onnx_int8_unfused": OnnxModel(tmp / f"{key}.int8-none.onnx", args.threads),
                    "torch_dynamic_int8": torch_int8, **openvino}
        x = torch.randn(args.batch, model.cfg.in_chans, *model.cfg.img_size)
        if args.torchao:
            variants["torchao_static_int8"] = torchao_static_int8(model, x, calibration_images(key, args.data, meta, x))
        per_round = []
        with torch.inference_mode():
            for v in variants.values():
                v(x), v(x)  # the second call with a shape compiles OpenVINO's static-shape copy
            for r in range(args.rounds):
                names = list(variants)
                order = names[r % len(names):] + names[:r % len(names)]
                per_round.append({n: rate(lambda: variants[n](x), len(x), args.min_seconds, min_runs=2) for n in order})
                print(f"{key} round {r + 1}: " + ", ".join(f"{n} {per_round[-1][n]:.1f} img/s" for n in names),
                      file=sys.stderr, flush=True)
        row = {"model": key, "batch": args.batch, "int8_top1_agreement_random_input": q["top1_agreement"]}
        for n in variants:
            ratios = [p[n] / p["torch_fp32"] for p in per_round]
            row[n] = {"img_s_median": statistics.median(p[n] for p in per_round),
                      "speedup_median": statistics.median(ratios), "speedup_min": min(ratios),
                      "speedup_max": max(ratios)}
        if key == "mnist":
            fp32 = evaluate_checkpoint(src, args.data)["top1"]
            int8 = evaluate_checkpoint(tmp / f"{key}.int8.onnx", args.data)["top1"]
            row.update(test_acc_fp32=fp32, test_acc_int8=int8, loss_points=100 * (fp32 - int8))
            if openvino:
                ov_int8 = evaluate_checkpoint(tmp / f"{key}.int8.xml", args.data)["top1"]
                row.update(test_acc_openvino_int8=ov_int8, openvino_int8_loss_points=100 * (fp32 - ov_int8))
            if args.torchao:
                row["test_acc_torchao_int8"] = evaluate(FixedBatch(variants["torchao_static_int8"], x),
                                                        split_loader(args.data, meta, "test", len(x)),
                                                        model.cfg.num_classes).top1
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "cpu": cpu_description(), "machine": describe(),
                               "rows": rows}, indent=2))
    compared = ("onnx_fp32", "onnx_int8", "onnx_int8_whole", "onnx_int8_unfused", "torch_dynamic_int8")
    for r in rows:
        for n in ("openvino", "openvino_int8"):
            if n in r:
                acc = f", test acc {100 * r['test_acc_openvino_int8']:.2f}%" if n == "openvino_int8" and \
                    "test_acc_openvino_int8" in r else ""
                print(f"{n} ({r['model']}): {r[n]['speedup_median']:.2f}x ({r[n]['speedup_min']:.2f}-"
                      f"{r[n]['speedup_max']:.2f}) over vitkit fp32{acc}")
    print("| model | vitkit fp32 img/s | onnx fp32 | onnx int8 (vitkit: fused attention, batch split) | "
          "int8, whole batch | int8, unfused | torch dynamic int8 | test acc fp32 -> int8 |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        acc = (f"{100 * r['test_acc_fp32']:.2f}% -> {100 * r['test_acc_int8']:.2f}%" if "test_acc_fp32" in r else "")
        cells = [f"{r[n]['speedup_median']:.2f}x ({r[n]['speedup_min']:.2f}-{r[n]['speedup_max']:.2f})"
                 for n in compared]
        print(f"| {r['model']} | {r['torch_fp32']['img_s_median']:.0f} | " + " | ".join(cells) + f" | {acc} |")
        if "torchao_static_int8" in r:
            t = r["torchao_static_int8"]
            print(f"torchao static int8 ({r['model']}): {t['speedup_median']:.2f}x ({t['speedup_min']:.2f}-"
                  f"{t['speedup_max']:.2f}), test acc {r.get('test_acc_torchao_int8', '-')}")


if __name__ == "__main__":
    main()
