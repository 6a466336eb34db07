"""vitkit against the peers on this machine, round-robin in one process.

    python benchmarks/throughput.py --models mnist,ti16,s16,b16 --rounds 5

For each model and each mode (inference at batch 1, inference at batch 32, training at batch 32 =
forward + backward + AdamW step) the implementations are timed in turn, in a rotating order, for
several rounds; every round also times an fp32 2048^3 matrix multiply. This CPU's speed drifts by
+-30% within minutes, so only ratios within a round are trusted: the table gives the median per-round
ratio to the fastest peer (and its range) and the efficiency, model GFLOP/s / the round's matmul
GFLOP/s. Peak memory is measured afterwards, one subprocess per cell: the growth of the peak resident
set (VmHWM) over one iteration, after the model and input exist (activations, gradients, optimizer
state, workspace).

Allocator: glibc's malloc adapts its mmap threshold to what a process did before, which moves CPU
speed by up to 1.2x (benchmarks/allocator.py); every `vitkit` command fixes it first
(`vitkit.tune_allocator()`). In one process the setting applies to all implementations alike, so this
process is tuned too (`--allocator default` to leave glibc's behaviour). `--processes` instead runs
each implementation in its own process, as its library leaves one: vitkit tuned, the peers with
glibc's defaults; still timed one at a time, round-robin.

`vitkit_auto` is vitkit as `vitkit eval --checkpoint RUN`/`predict` run it with no flags: for inference
the checkpoint loaded by `vitkit.load` with the precision and runtime it chooses here (OpenVINO on
AVX-512 CPUs where it is installed, converted once and cached; else PyTorch), for training `--precision
auto`. `vitkit` is the PyTorch path in fp32 (`vitkit.models.inference.inference_model`), also
compiled (`vitkit_compiled`, the `--compile` option: for inference with frozen weights, for training
the forward and backward as `vitkit train --compile` does; compilation happens in the warm-up,
outside the timing), and, for inference, as the fp32 file `vitkit export --format onnx` writes, run
by onnxruntime the way `vitkit eval`/`predict` run it (`vitkit_onnx`; needs `vitkit[onnx]`).

Peers: Hugging Face transformers' ViT (SDPA and eager attention), vit-pytorch (its `vit` module is
loaded on its own: the package's __init__ imports torchvision, which does not load beside this
torch), and timm when it imports. All get the same threads, dtype (fp32), input and the same
optimiser (torch.optim.AdamW with its defaults, for vitkit built by vitkit's own optimiser code).
Runtime peers (`openvino_onnx`, `openvino_ir`, each also `_throughput`): plain OpenVINO compiling
vitkit's fp32 .onnx / IR with only a performance hint, as its users run a file; they get their own
column, "x fastest plain runtime", the anchor for vitkit on its own exported file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common import MODELS, MODES, Cell, cpu_description, model_name, random_checkpoint, time_cell
from vitkit.cost import vit_cost
from vitkit.machine import describe
from vitkit.models import model_config
from vitkit.models.compiled import compiled

# --- the implementations -------------------------------------------------------------------------
def build_vitkit(name: str) -> nn.Module:
    from vitkit.models import create_model
    return create_model(name)


def build_vitkit_onnx(name: str, int8: bool = False, whole: bool = False) -> nn.Module:
    """The model as `vitkit export --format onnx` (`int8`: `--format int8`) writes it and `vitkit eval` runs
    it on onnxruntime: slices of the batch on concurrent one-thread sessions, each slice in runs of as many
    images as fit the cache (`whole`: each slice in one run, as before that rule)."""
    import tempfile

    from vitkit.engines.onnx import OnnxModel
    from vitkit.export import export_int8, export_onnx
    with tempfile.TemporaryDirectory() as d:
        (export_int8 if int8 else export_onnx)(random_checkpoint(name, Path(d) / "w.safetensors"), Path(d) / "w.onnx",
                                               check=False)
        return OnnxModel(Path(d) / "w.onnx", run_images=1 << 30 if whole else None)  # the session holds the graph


def build_vitkit_openvino(name: str, hint: str = "THROUGHPUT", precision: str = "fp32",
                          run_in: str = "openvino", static_shapes: bool = True, split: bool = True,
                          int8_scheme: str = "auto") -> nn.Module:
    """The IR `vitkit export --format openvino` writes, compiled by OpenVINO with its own precision choice
    (`run_in="openvino"`: bf16 on every CPU with AVX512-BF16; "fp32" forces f32) and the given
    performance hint; `static_shapes=False`: one dynamic-shape compilation only (what vitkit's engine
    adds over it: a static compilation for a shape that comes back); `split=False`: a batch on one stream of
    every thread instead of one slice per thread on its own stream (vitkit's default). int8: NNCF post-training
    quantisation calibrated on 64 images of the built-in synthetic set (random weights: speed only), in
    `int8_scheme` (default auto, as `vitkit export` writes it: the faster of fast and mlp here)."""
    import tempfile

    from vitkit.engines.openvino import OpenVINOModel
    from vitkit.export import export_openvino
    with tempfile.TemporaryDirectory() as d:
        export_openvino(random_checkpoint(name, Path(d) / "w.safetensors"), Path(d) / "w.xml", precision,
                        check=False, data="synthetic" if precision == "int8" else None, calibration_count=64,
                        int8_scheme=int8_scheme)
        return OpenVINOModel(Path(d) / "w.xml", precision=run_in, hint=hint,  # compiled: the files may go
                             static_shapes=static_shapes, split=split)


def build_vitkit_onnx_auto(name: str) -> nn.Module:
    """vitkit's exported .onnx file run as `vitkit eval --checkpoint FILE.onnx` runs it with no flags
    (`--runtime auto`: the rule in vitkit.load)."""
    import tempfile

    from vitkit.export import export_onnx
    from vitkit.load import load
    with tempfile.TemporaryDirectory() as d:
        export_onnx(random_checkpoint(name, Path(d) / "w.safetensors"), Path(d) / "w.onnx", check=False)
        return load(Path(d) / "w.onnx").for_inference()[0]  # the session holds the graph: the file may go


def build_vitkit_checkpoint_auto(name: str) -> nn.Module:
    """A checkpoint run as `vitkit eval --checkpoint RUN` runs it with no flags (--precision auto,
    --runtime auto: OpenVINO on AVX-512 CPUs where it is installed, else PyTorch; vitkit.load)."""
    import tempfile

    from vitkit.load import load
    with tempfile.TemporaryDirectory() as d:
        ready = load(random_checkpoint(name, Path(d) / "w.safetensors")).for_inference(runtime="auto")
        print(f"vitkit_auto {name}: {ready.runtime} ({ready.runtime_reason}), {ready.precision}", file=sys.stderr)
        return ready.model


class _OpenVINOAsUsed(nn.Module):
    """OpenVINO as its own users run a file: `compile_model(file, "CPU", {"PERFORMANCE_HINT": hint})`
    with everything else (precision: bf16 on any CPU with AVX512-BF16) left to OpenVINO, called on numpy
    arrays; no vitkit code on the path. The anchor of "vitkit on its file >= the fastest runtime"."""

    def __init__(self, path: Path, hint: str):
        super().__init__()
        import openvino as ov
        self.compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": hint})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.compiled(x.numpy())[0])


def build_openvino_as_used(name: str, fmt: str, hint: str) -> nn.Module:
    """vitkit's exported .onnx or IR (fp32) compiled by plain OpenVINO with the given hint."""
    import tempfile

    from vitkit.export import export_onnx, export_openvino
    with tempfile.TemporaryDirectory() as d:
        ckpt, out = random_checkpoint(name, Path(d) / "w.safetensors"), Path(d) / f"w.{fmt}"
        (export_onnx if fmt == "onnx" else export_openvino)(ckpt, out, check=False)
        return _OpenVINOAsUsed(out, hint)  # compiled: the files may go


def build_hf(name: str, attn: str) -> nn.Module:
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification
    c = model_config(name)
    hf = HFConfig(hidden_size=c.embed_dim, num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
                  intermediate_size=c.mlp_dim, image_size=c.img_size[0], patch_size=c.patch_size,
                  num_channels=c.in_chans, num_labels=c.num_classes, qkv_bias=True, hidden_act="gelu",
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=c.norm_eps)
    hf._attn_implementation = attn
    return _Logits(ViTForImageClassification(hf))


class _Logits(nn.Module):
    """HF models return an output object; the benchmark wants the logits tensor like the others."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _vit_pytorch_module():
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("vit-pytorch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "vit.py"
    mod_spec = importlib.util.spec_from_file_location("_vit_pytorch_vit", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def build_vit_pytorch(name: str) -> nn.Module:
    c = model_config(name)
    return _vit_pytorch_module().ViT(image_size=c.img_size[0], patch_size=c.patch_size, num_classes=c.num_classes,
                                     dim=c.embed_dim, depth=c.depth, heads=c.num_heads, mlp_dim=c.mlp_dim,
                                     channels=c.in_chans, dim_head=c.embed_dim // c.num_heads)


def build_timm(name: str) -> nn.Module:
    import timm
    c = model_config(name)
    return timm.models.VisionTransformer(img_size=c.img_size[0], patch_size=c.patch_size, in_chans=c.in_chans,
                                         num_classes=c.num_classes, embed_dim=c.embed_dim, depth=c.depth,
                                         num_heads=c.num_heads, mlp_ratio=c.mlp_dim / c.embed_dim)


IMPLS: dict[str, Callable[[str], nn.Module]] = {
    "vitkit": build_vitkit,
    "vitkit_auto": build_vitkit,       # as `vitkit eval`/`train` run with no flags (inference: make_cell)
    "vitkit_bf16": build_vitkit,       # --precision bf16 (inference: bf16 weights; training: autocast)
    "vitkit_fp16": build_vitkit,       # --precision fp16 (the same, in fp16)
    "vitkit_compiled": build_vitkit,   # torch.compile (inference: with frozen weights)
    "vitkit_onnx": build_vitkit_onnx,  # inference only: the exported fp32 file on onnxruntime
    "vitkit_onnx_whole": lambda n: build_vitkit_onnx(n, whole=True),  # ... each slice in one run
    "vitkit_onnx_int8": lambda n: build_vitkit_onnx(n, int8=True),    # the int8 file on onnxruntime
    "vitkit_onnx_int8_whole": lambda n: build_vitkit_onnx(n, int8=True, whole=True),
    "vitkit_openvino": lambda n: build_vitkit_openvino(n, "LATENCY"),  # inference only: the IR on OpenVINO
    "vitkit_openvino_throughput": build_vitkit_openvino,              # ... with the THROUGHPUT hint
    "vitkit_openvino_f32": lambda n: build_vitkit_openvino(n, "LATENCY", run_in="fp32"),  # f32 forced
    "vitkit_openvino_int8": lambda n: build_vitkit_openvino(n, "LATENCY", "int8"),  # --precision int8 IR
    "vitkit_openvino_int8_fast": lambda n: build_vitkit_openvino(n, "LATENCY", "int8", int8_scheme="fast"),
    "vitkit_openvino_int8_mlp": lambda n: build_vitkit_openvino(n, "LATENCY", "int8", int8_scheme="mlp"),
    "vitkit_openvino_int8_throughput": lambda n: build_vitkit_openvino(n, "THROUGHPUT", "int8"),
    "vitkit_openvino_dynamic": lambda n: build_vitkit_openvino(n, "LATENCY", static_shapes=False),
    "vitkit_openvino_int8_dynamic": lambda n: build_vitkit_openvino(n, "LATENCY", "int8", static_shapes=False),
    "vitkit_openvino_unsplit": lambda n: build_vitkit_openvino(n, "LATENCY", split=False),
    "vitkit_openvino_int8_unsplit": lambda n: build_vitkit_openvino(n, "LATENCY", "int8", split=False),
    "vitkit_file_auto": build_vitkit_onnx_auto,  # the .onnx file on the runtime --runtime auto picks here
    # plain OpenVINO on vitkit's fp32 files, as its users run them (runtime peers: not in "x fastest peer")
    "openvino_onnx": lambda n: build_openvino_as_used(n, "onnx", "LATENCY"),
    "openvino_onnx_throughput": lambda n: build_openvino_as_used(n, "onnx", "THROUGHPUT"),
    "openvino_ir": lambda n: build_openvino_as_used(n, "xml", "LATENCY"),
    "openvino_ir_throughput": lambda n: build_openvino_as_used(n, "xml", "THROUGHPUT"),
    "hf_sdpa": lambda n: build_hf(n, "sdpa"),
    "hf_sdpa_bf16": lambda n: build_hf(n, "sdpa"),  # bf16 weights (inference) / autocast (training)
    "hf_sdpa_fp16": lambda n: build_hf(n, "sdpa"),  # the same in fp16
    "hf_eager": lambda n: build_hf(n, "eager"),
    "vit_pytorch": build_vit_pytorch,
    "timm": build_timm,
}


def available(names: list[str]) -> dict[str, Callable[[str], nn.Module]]:
    out = {}
    for n in names:
        try:
            IMPLS[n]("vit_mnist_patch7_28")
            out[n] = IMPLS[n]
        except Exception as e:  # a peer that does not install or import here is reported and left out
            print(f"skipping {n}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
    return out


# --- one cell: a model, a mode, an implementation -------------------------------------------------
# Where and in which precision the implementations run (--device, --dtype): one setting for all, except
# those whose name says their own (`_bf16`; `vitkit_auto`: vitkit's automatic choice on this machine).
DEVICE, DTYPE = torch.device("cpu"), None
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
RUNTIME_PEERS = "openvino_"  # plain runtimes on vitkit's files: their own ratio column, not PyTorch peers
FILE_IMPLS = ("vitkit_onnx", "vitkit_openvino", "vitkit_file", RUNTIME_PEERS)  # exported files: CPU inference only


def precision_of(impl: str) -> torch.dtype | None:
    if impl.endswith("_bf16"):
        return torch.bfloat16
    if impl.endswith("_fp16"):
        return torch.float16
    if impl == "vitkit_auto":
        from vitkit.precision import choose
        return DTYPES[choose("auto", DEVICE)[0]]
    return DTYPE


def _autocast(dtype: torch.dtype | None):
    return torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype is not None)


def _finish() -> None:
    """A GPU runs asynchronously: a step counts once its kernels are done."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _inference_cell(model: nn.Module, name: str, batch: int, autocast: torch.dtype | None,
                    x: torch.Tensor | None = None) -> Cell:
    if x is None:
        c = model_config(name)
        x = torch.randn(batch, c.in_chans, *c.img_size, device=DEVICE)

    def step() -> None:
        with torch.inference_mode(), _autocast(autocast):
            model(x)
        _finish()
    return Cell(step, batch)


def make_cell(impl: str, name: str, mode: str) -> Cell:
    train, batch = MODES[mode]
    torch.manual_seed(0)
    if impl == "vitkit_auto" and not train:  # what `vitkit eval` runs: precision and runtime chosen by load
        return _inference_cell(build_vitkit_checkpoint_auto(name), name, batch, None)
    model = IMPLS[impl](name)
    if DEVICE.type != "cpu":
        if impl.startswith(FILE_IMPLS):
            raise ValueError(f"{impl} runs on the CPU only")
        model = model.to(DEVICE)
    c = model_config(name)
    x = torch.randn(batch, c.in_chans, *c.img_size, device=DEVICE)
    dtype = precision_of(impl)
    if not train:
        model.eval()
        autocast = dtype
        if dtype is not None and impl in ("vitkit_auto", "vitkit_bf16", "vitkit_fp16"):  # converted weights, as vitkit runs them
            from vitkit.precision import in_precision
            model, autocast = in_precision(model, "bf16" if dtype == torch.bfloat16 else "fp16"), None
        elif dtype is not None and impl.endswith(("_bf16", "_fp16")):  # a peer's bf16/fp16 path: weights and input in bf16
            model, x, autocast = model.to(dtype), x.to(dtype), None
        if impl.startswith("vitkit"):
            from vitkit.models.inference import inference_model
            model = inference_model(model, compile=impl == "vitkit_compiled")
        return _inference_cell(model, name, batch, autocast, x)
    model.train()
    y = torch.randint(0, c.num_classes, (batch,), device=DEVICE)
    if impl.startswith("vitkit"):
        from vitkit.config import OptimConfig
        from vitkit.train.optim import build_optimizer
        opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-4, weight_decay=0.0))
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()
    net = compiled(model) if impl == "vitkit_compiled" else model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(dtype):
            loss = loss_fn(net(x).float(), y)
        loss.backward()
        opt.step()
        _finish()
    return Cell(step, batch)


def matmul_gflops(size: int = 2048, repeats: int = 3) -> float:
    a = torch.randn(size, size, device=DEVICE, dtype=DTYPE or torch.float32)
    b = torch.randn(size, size, device=DEVICE, dtype=DTYPE or torch.float32)
    a @ b
    _finish()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _finish()
    return repeats * 2 * size ** 3 / (time.perf_counter() - t0) / 1e9


# --- peak memory, one subprocess per cell ---------------------------------------------------------
def peak_memory_mb(impl: str, name: str, mode: str, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-probe", impl, name, mode, "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _high_water_kib() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    from the parent across exec, so a child of a large benchmark process would never see it grow."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_probe(impl: str, name: str, mode: str) -> None:
    cell = make_cell(impl, name, mode)
    before = _high_water_kib()
    cell.step()
    print((_high_water_kib() - before) / 1024)


# --- the benchmark --------------------------------------------------------------------------------
class InProcess:
    """A cell timed in this process."""

    def __init__(self, impl: str, name: str, mode: str, threads: int):
        self.cell = make_cell(impl, name, mode)
        for _ in range(2):  # warm-up: first-call allocations, kernel selection; OpenVINO's static shape
            self.cell.step()

    def time(self, seconds: float) -> float:
        return time_cell(self.cell, seconds)

    def close(self) -> None:
        pass


class OwnProcess:
    """A cell in its own process, set up as its library leaves a process: vitkit's after
    `tune_allocator()` (what every `vitkit` command does first), the peers' with glibc's defaults.
    Timed on request, one process at a time, so the round-robin still never runs two at once."""

    def __init__(self, impl: str, name: str, mode: str, threads: int):
        cmd = [sys.executable, __file__, "--serve", impl, name, mode, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        # Setup may print (NNCF's progress bars go to stdout): everything before "ready" is skipped.
        for line in self.proc.stdout:
            if line.strip() == "ready":
                return
        raise RuntimeError(f"{impl} {name} {mode}: the child process exited before it was ready "
                           f"(exit code {self.proc.wait()}; its error is above)")

    def time(self, seconds: float) -> float:
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def serve(impl: str, name: str, mode: str) -> None:
    """The child side of OwnProcess: build and warm the cell, then time it whenever asked."""
    if impl.startswith("vitkit"):
        from vitkit.runtime import tune_allocator
        tune_allocator()
    with contextlib.redirect_stdout(sys.stderr):   # stdout carries only the timing protocol
        cell = InProcess(impl, name, mode, torch.get_num_threads())
    print("ready", flush=True)
    for line in sys.stdin:
        print(cell.time(float(line)), flush=True)


def run(models: list[str], impls: list[str], modes: list[str], rounds: int, min_seconds: float,
        threads: int, processes: bool = False) -> list[dict]:
    rows = []
    for key in models:
        name = model_name(key)
        gflop_fwd = vit_cost(model_config(name)).gflops_total
        for mode in modes:
            train, _ = MODES[mode]
            if processes and train and name == MODELS["b16"] and len(impls) > 3:
                print("skipping b16 training in --processes mode: each process holds 5-7 GB, more than three do "
                      "not fit in 24 GB (run it alone with --impls of three)", file=sys.stderr)
                continue
            gflop_img = gflop_fwd * (3 if train else 1)
            kind = OwnProcess if processes else InProcess
            cells = {i: kind(i, name, mode, threads) for i in impls
                     if not (train and i.startswith(FILE_IMPLS))}
            per_round = []
            for r in range(rounds):
                mm = matmul_gflops()
                names = list(cells)
                order = names[r % len(names):] + names[:r % len(names)]
                per_round.append({"matmul_gflops": mm, **{i: cells[i].time(min_seconds) for i in order}})
                print(f"{key} {mode} round {r + 1}/{rounds}: matmul {mm:.0f} GFLOP/s, "
                      + ", ".join(f"{i} {per_round[-1][i]:.1f} img/s" for i in names), file=sys.stderr, flush=True)
            peers = [i for i in cells if not i.startswith(("vitkit", RUNTIME_PEERS))]
            runtimes = [i for i in cells if i.startswith(RUNTIME_PEERS)]
            for i in cells:
                ips = [p[i] for p in per_round]
                eff = [p[i] * gflop_img / p["matmul_gflops"] for p in per_round]
                row = {"model": name, "mode": mode, "impl": i, "img_s_median": statistics.median(ips),
                       "efficiency_median": statistics.median(eff), "gflop_per_img": gflop_img}
                for anchors, median, low, high in ((peers, "ratio_to_fastest_peer_median", "ratio_min", "ratio_max"),
                                                   (runtimes, "ratio_to_fastest_runtime_median", "runtime_ratio_min",
                                                    "runtime_ratio_max")):
                    if anchors:
                        ratios = [p[i] / max(p[j] for j in anchors) for p in per_round]
                        row.update({median: statistics.median(ratios), low: min(ratios), high: max(ratios)})
                rows.append(row)
            for cell in cells.values():
                cell.close()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | mode | implementation | img/s (median) | efficiency | x fastest peer (median, range) | "
             "x fastest plain runtime | peak MB |", "|---|---|---|---:|---:|---|---|---:|"]
    for r in rows:
        ratio = (f"{r['ratio_to_fastest_peer_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
                 if "ratio_to_fastest_peer_median" in r else "")
        runtime = (f"{r['ratio_to_fastest_runtime_median']:.2f} ({r['runtime_ratio_min']:.2f}-"
                   f"{r['runtime_ratio_max']:.2f})" if "ratio_to_fastest_runtime_median" in r else "")
        mem = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else ""
        lines.append(f"| {r['model']} | {r['mode']} | {r['impl']} | {r['img_s_median']:.1f} | "
                     f"{r['efficiency_median'] * 100:.0f}% | {ratio} | {runtime} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mnist,ti16,s16,b16",
                    help="comma-separated: mnist, ti16, s16, b16, or registered vitkit names")
    ap.add_argument("--impls", default="vitkit,vitkit_compiled,vitkit_onnx,hf_sdpa,hf_eager,vit_pytorch,timm",
                    help="implementations to compare (those that do not import are skipped)")
    ap.add_argument("--modes", default="infer_b1,infer_b32,train_b32", help="comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds per model and mode")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed seconds per cell per round")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads for every implementation")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--out", default="benchmarks/results/throughput.json", help="JSON output (a .md is written beside)")
    ap.add_argument("--memory-only", metavar="JSON", help="only measure peak memory for the rows of an earlier "
                    "result file (timings kept)")
    ap.add_argument("--processes", action="store_true",
                    help="run each implementation in its own process, as its library leaves a process (vitkit "
                    "with tune_allocator(), the peers with glibc's defaults), instead of all in this one "
                    "(where this process's allocator settings apply to all alike)")
    ap.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                    help="in-process mode: this process's malloc thresholds (tuned: vitkit.tune_allocator())")
    ap.add_argument("--device", default="cpu",
                    help="where every implementation runs: cpu (default) or cuda[:N] (in-process mode only)")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES),
                    help="autocast precision for every implementation (default fp32); the matmul too")
    ap.add_argument("--memory-probe", nargs=3, metavar=("IMPL", "MODEL", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--serve", nargs=3, metavar=("IMPL", "MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    global DEVICE, DTYPE
    from vitkit.devices import resolve_device
    from vitkit.errors import VitkitError
    try:
        DEVICE, DTYPE = resolve_device(args.device), DTYPES[args.dtype]
    except VitkitError as e:
        ap.error(str(e))
    if DEVICE.type != "cpu" and (args.processes or not args.no_memory):
        ap.error("--device cuda: in-process mode with --no-memory (peak RSS measures host memory)")
    torch.set_num_threads(args.threads)
    if args.serve:
        serve(*args.serve)
        return
    if args.allocator == "tuned" and not args.processes:
        from vitkit.runtime import tune_allocator
        tune_allocator()
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return
    if args.memory_only:  # fill in (or redo) the memory column of an earlier result
        result = json.loads(Path(args.memory_only).read_text())
        rows = result["rows"]
    else:
        impls = list(available(args.impls.split(",")))
        models, modes = args.models.split(","), args.modes.split(",")
        rows = run(models, impls, modes, args.rounds, args.min_seconds, args.threads, args.processes)
    if not args.no_memory:
        for r in rows:
            if r["impl"] != "vitkit_compiled":  # its peak would be the compiler's
                r["peak_mb"] = peak_memory_mb(r["impl"], r["model"], r["mode"], args.threads)
    if not args.memory_only:
        gpu = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None
        result = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "torch": torch.__version__,
                  "device": str(DEVICE), "gpu": gpu, "dtype": args.dtype,
                  "cpu_count": os.cpu_count(), "cpu": cpu_description(), "machine": describe(), "rounds": args.rounds,
                  "command": " ".join(sys.argv),
                  "processes": args.processes, "allocator": "per library" if args.processes else args.allocator}
    result["rows"] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    table = markdown(rows)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
