"""A model run by OpenVINO behind the nn.Module interface: an IR written by `vitkit export --format
openvino` (.xml + .bin), any .onnx file vitkit exported, or a PyTorch checkpoint converted once and
kept in vitkit's cache (`checkpoint_ir`: what `--runtime openvino`/`auto` does with a checkpoint).

OpenVINO left to itself picks bf16 on every CPU with AVX512-BF16, also where that is slower (a Xeon
without AMX); vitkit tells it the precision instead (`INFERENCE_PRECISION_HINT`): an fp32 file runs in
vitkit's automatic precision, as a checkpoint does (bf16 where the probe measured it faster: on a Zen 4
EPYC OpenVINO ran ViT-S/16 1.5x faster in bf16 than in f32, docs/export.md), `precision="fp32"` forces f32
(the parity tests and `--precision fp32`).
The LATENCY hint is the default: each call is one synchronous request, and THROUGHPUT's parallel
streams then leave cores idle (ViT-S/16 at batch 32: 8.3 against 14.3 img/s, docs/export.md).

Files are written with a dynamic batch size, which OpenVINO compiles into shape-generic kernels. A shape
that comes back (a second call with it) gets its own static-shape compilation, kept for later calls: on a
Xeon with AMX that ran int8 IRs 1.10-1.67x and bf16 ones 0.98-1.47x as fast (MNIST at batch 1 most),
for 0.1-0.45 s of compilation once (docs/export.md). At most
`MAX_STATIC_SHAPES` are kept (each holds its own prepared weights); other shapes, such as an
evaluation's last partial batch, run on the dynamic compilation.

A batch that divides evenly over the threads runs as that many slices at once, one OpenVINO stream of
one thread each (`_Streams`), as the onnxruntime engine does: a small model's operators parallelise
badly over threads, whole slices do not need to. On the 2-core AMX Xeon (docs/export.md) that ran
batch 32 1.01-1.16x as fast as one request on both threads (medians of 3 rounds, each engine in its own
process: MNIST model int8 IR 1.16x, bf16 1.14x; ViT-S/16 bf16 1.08x, int8 1.01x).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import META_KEY, config_from_meta
from ..errors import VitkitError

RT_INFO = [META_KEY, "meta"]   # where an IR keeps vitkit's metadata
HINTS = ("LATENCY", "THROUGHPUT")
MAX_STATIC_SHAPES = 3


def openvino():
    """The openvino module, or a one-line error that says how to get it."""
    try:
        import openvino as ov
    except ImportError:
        raise VitkitError("OpenVINO files need openvino: pip install 'vitkit[openvino]'") from None
    return ov


def _first_line(e: Exception) -> str:
    """OpenVINO's messages open with where in its sources they were raised: the reason is the last line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def read_meta(path: str | Path) -> dict[str, Any]:
    """vitkit's metadata of an IR (rt_info) or of an exported .onnx file (metadata_props)."""
    p = Path(path)
    if p.suffix == ".onnx":
        import onnx

        props = {m.key: m.value for m in onnx.load(str(p), load_external_data=False).metadata_props}
        if META_KEY not in props:
            raise VitkitError(f"{p} carries no vitkit metadata (export it with `vitkit export`)")
        return json.loads(props[META_KEY])
    try:
        model = openvino().Core().read_model(str(p))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own types for a bad file
        raise VitkitError(f"{p}: not a loadable OpenVINO model ({_first_line(e)})") from None
    if not model.has_rt_info(RT_INFO):
        raise VitkitError(f"{p} carries no vitkit metadata (export it with `vitkit export --format openvino`)")
    return json.loads(model.get_rt_info(RT_INFO).astype(str))


class OpenVINOModel(nn.Module):
    """An IR or .onnx file compiled for OpenVINO's CPU plugin, with the config and metadata it carries."""

    def __init__(self, path: str | Path, precision: str | None = None, hint: str = "LATENCY",
                 static_shapes: bool = True, split: bool = True):
        """`precision`: fp32 or bf16 forces OpenVINO's inference precision; "openvino" leaves it to
        OpenVINO (bf16 wherever the CPU has AVX512-BF16, also where that is slower); None: a bf16 IR runs
        in bf16, and every other file (fp32 IRs, .onnx files, an int8 IR's float parts) in vitkit's
        automatic precision (vitkit.precision: bf16 only where it measured faster). `static_shapes`: compile
        a shape that comes back for that shape alone (the module docstring); False keeps one compilation
        (`compile_for` still adds shapes). `split`: run a static batch shape that divides evenly over the
        threads as concurrent slices, one stream per thread (the module docstring)."""
        super().__init__()
        ov = openvino()
        if hint not in HINTS:
            raise VitkitError(f"OpenVINO performance hint '{hint}': choose {' or '.join(HINTS)}")
        if precision not in (None, "fp32", "bf16", "openvino"):
            raise VitkitError(f"OpenVINO runs fp32 or bf16, not {precision}")
        config: dict[str, str] = {"PERFORMANCE_HINT": hint}
        self.path, self.hint, self.meta = Path(path), hint, read_meta(path)
        self.precision_reason = "as asked"
        if precision is None:
            precision, self.precision_reason = file_precision(self.meta.get("openvino_precision"))
        if precision in ("fp32", "bf16"):
            config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
        threads = torch.get_num_threads()
        if threads < (os.cpu_count() or 1):  # told to use fewer cores (serve --workers)
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self._core, self._config, self.static_shapes = ov.Core(), config, static_shapes
        self.parts = threads if split else 1
        try:
            self._graph = self._core.read_model(str(path))
            self.compiled = self._core.compile_model(self._graph, "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own types for a bad file
            raise VitkitError(f"{path}: not a loadable OpenVINO model ({_first_line(e)})") from None
        self._by_shape: dict[tuple[int, ...], Any] = {}
        self._calls: Counter[tuple[int, ...]] = Counter()
        self._lock = threading.Lock()
        self.cfg = config_from_meta(self.meta)
        self.num_classes = self.cfg.num_classes
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        # str() of the property reads "<Type: 'bfloat16'>" or "<Type: 'float32'>" in current OpenVINO
        self.precision = "bf16" if re.search(r"bf16|bfloat16", self.inference_precision.lower()) else "fp32"

    def in_precision(self, precision: str) -> "OpenVINOModel":
        """This file compiled again for `precision` (fp32 | bf16), or itself if it already runs in it."""
        if precision == self.precision:
            return self
        return OpenVINOModel(self.path, precision, self.hint, self.static_shapes, self.parts > 1)

    def compile_for(self, shape: tuple[int, ...]) -> None:
        """Compile the graph for exactly this input shape now (a server's batch sizes, before it is ready)."""
        shape = tuple(int(n) for n in shape)
        with self._lock:
            if shape in self._by_shape or len(self._by_shape) >= MAX_STATIC_SHAPES:
                return
            graph, parts = self._graph.clone(), self.parts if shape[0] % self.parts == 0 else 1
            try:
                graph.reshape({graph.inputs[0]: (shape[0] // parts, *shape[1:])})
                if parts == 1:
                    self._by_shape[shape] = self._core.compile_model(graph, "CPU", self._config)
                else:
                    self._by_shape[shape] = _Streams(self._core.compile_model(graph, "CPU", {
                        **self._config, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(parts),
                        "INFERENCE_NUM_THREADS": str(parts)}), parts)
            except Exception as e:  # noqa: BLE001 - a shape the graph cannot take
                raise VitkitError(f"{self.path}: cannot run input shape {list(shape)} ({_first_line(e)})") from None

    def pin_shapes(self, shapes: list[tuple[int, ...]]) -> None:
        """Compile exactly these input shapes now and learn no others from the calls that follow (a server's
        batch sizes, before it reports ready: no request waits for a compilation)."""
        self.static_shapes = False
        for shape in shapes:
            self.compile_for(shape)

    def _compiled_for(self, shape: tuple[int, ...]) -> Any:
        compiled = self._by_shape.get(shape)
        if compiled is not None:
            return compiled
        if self.static_shapes and len(self._by_shape) < MAX_STATIC_SHAPES:
            with self._lock:
                self._calls[shape] += 1
                again = self._calls[shape] >= 2
            if again:
                self.compile_for(shape)
                return self._by_shape.get(shape, self.compiled)
        return self.compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits on the device the images came from (OpenVINO runs on the CPU)."""
        x_np = x.detach().float().cpu().contiguous().numpy()
        out = self._compiled_for(tuple(x_np.shape))(x_np)[0]
        return torch.from_numpy(out).to(x.device)


class _Streams:
    """A batch as `parts` equal slices, each on its own stream of a compiled model, run at once."""

    def __init__(self, compiled: Any, parts: int):
        self.compiled, self.parts = compiled, parts
        self.requests = [compiled.create_infer_request() for _ in range(parts)]

    def __call__(self, x: Any) -> list[Any]:
        for request, part in zip(self.requests, np.split(x, self.parts)):  # views of a C-contiguous batch
            request.start_async({0: part}, share_inputs=True)
        for request in self.requests:
            request.wait()
        return [np.concatenate([r.get_output_tensor(0).data for r in self.requests])]


def file_precision(exported_as: str | None) -> tuple[str, str]:
    """(precision, why) an exported file runs in by default: bf16 if it was exported for bf16, else
    vitkit's automatic choice for this CPU (an fp32 file holds fp32 weights, like a checkpoint)."""
    if exported_as == "bf16":
        return "bf16", "exported for bf16"
    from ..precision import choose
    return choose("auto", torch.device("cpu"))


def from_checkpoint(model: nn.Module, meta: dict[str, Any], precision: str) -> OpenVINOModel:
    """A PyTorch vitkit model (any batch size, its own image size) compiled for OpenVINO in `precision`
    (fp32 | bf16). Converted from the module by OpenVINO's PyTorch frontend the first time (2-4 s for
    ViT-S/16 to B/16 on 2 cores) and kept as an IR in the cache, under a digest of the weights, the
    config, the model's code and the versions, so later runs only compile it (0.3 s) and changed
    weights or code never meet a stale file. A cache that cannot be written costs the conversion every time, nothing else."""
    from ..checkpoint import model_meta
    from ..files import cache_dir, fsync_dir

    ov = openvino()
    meta = {**meta, **model_meta(model)}
    folder = cache_dir() / "openvino"
    xml = folder / f"{_digest(model, meta)}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        try:
            return OpenVINOModel(xml, precision)
        except VitkitError:
            pass  # a damaged entry (a disk fault): convert again, replacing it
    c, (h, w) = model.cfg.in_chans, model.cfg.img_size
    print(f"vitkit: converting the checkpoint for OpenVINO, once (kept in {folder})", file=sys.stderr)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the model's input checks, which it folds
        ir = ov.convert_model(model.eval(), example_input=torch.zeros(1, c, h, w), input=[(-1, c, h, w)])
    ir.set_rt_info(json.dumps(meta, default=str), RT_INFO)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        work, cached = Path(tempfile.mkdtemp(prefix=".convert.", dir=folder)), True
    except OSError:
        work, cached = Path(tempfile.mkdtemp(prefix="vitkit-openvino.")), False
    try:
        ov.save_model(ir, str(work / xml.name), compress_to_fp16=False)
        if not cached:
            return OpenVINOModel(work / xml.name, precision)  # compiled: the files may go
        for name in (xml.with_suffix(".bin").name, xml.name):  # the weights first: an .xml in place has its .bin
            os.replace(work / name, folder / name)
        fsync_dir(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return OpenVINOModel(xml, precision)


def _digest(model: nn.Module, meta: dict[str, Any]) -> str:
    """What the converted graph depends on: every weight's bytes (sha256 reads 1.3 GB/s), the metadata,
    the source files of the modules the model is built from (an edited forward is a new graph) and the
    versions of torch and OpenVINO."""
    h = hashlib.sha256(json.dumps([torch.__version__, openvino().__version__, type(model).__name__, meta],
                                  sort_keys=True, default=str).encode())
    for source in sorted({sys.modules[type(m).__module__].__file__ or "" for m in model.modules()}):
        if source:
            h.update(Path(source).read_bytes())
    for name, t in model.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:32]
