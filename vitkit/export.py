"""Deployment files: ONNX with a dynamic batch dimension (and, on request, dynamic height and width),
checked against PyTorch with onnxruntime, and its int8 variant (dynamic quantisation of the
matrix-multiply weights, onnxruntime's int8 kernels).

Both carry the checkpoint's metadata (model config, preprocessing, classes) in the ONNX file's
metadata, so `vitkit eval` and `vitkit predict` run them like any checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import META_KEY
from .engines.onnx import onnxruntime
from .errors import VitkitError
from .files import atomic_write
from .load import load_checkpoint
from .machine import describe

FORMATS = ("onnx", "int8")
FUSIONS = ("attention", "none")  # int8 graphs: onnxruntime's fused attention kernel / plain ONNX operators


def _check_dynamic_size(model: nn.Module) -> None:
    """Height and width can stay free in the file only where the graph recomputes everything size-bound
    from the input (position tables, relative-position offsets, "SAME" padding all do); ONNX has no
    antialiased resampling to recompute the tables with."""
    if model.cfg.resample_antialias:
        raise VitkitError("--dynamic-size: not for this model: ONNX has no antialiased bicubic resampling "
                          "(resample_antialias=True); export at its fixed size instead")


def _write_onnx(model: nn.Module, meta: dict[str, Any], path: str, opset: int, dynamic_size: bool = False) -> None:
    import onnx
    h, w = model.cfg.img_size
    axes = {0: "batch"}
    if dynamic_size:  # traced at twice the size, so the graph holds the position-table resampling for any grid
        h, w, axes = 2 * h, 2 * w, {0: "batch", 2: "height", 3: "width"}
    x = torch.randn(2, model.cfg.in_chans, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about the (constant) grid size
        torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": axes, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(proto, path)


class _FusedAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(D_h)) v from the fused qkv projection, exported as onnxruntime's `Attention`
    operator (its int8 form, `QAttention`, quantises the qkv weights and runs the heads in one kernel)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (x @ weight + bias).view(b, t, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)

    @staticmethod
    def symbolic(g, x, weight, bias, num_heads: int):  # noqa: ANN001 - the exporter's graph values
        out = g.op("com.microsoft::Attention", x, weight, bias, num_heads_i=num_heads)
        out.setType(x.type())  # same shape and dtype as the input: lets the exporter's shape inference go on
        return out


@contextlib.contextmanager
def _onnxruntime_attention(model: nn.Module) -> Iterator[None]:
    """While exporting, every self-attention without a relative-position bias becomes one `Attention` node,
    except the last block's class-token-only query, which stays plain matrix products."""
    from .models.vit import Attention

    def forward(self: Attention, x: torch.Tensor, grid: tuple[int, int], return_attn: bool = False,
                queries: int | None = None):
        if queries is not None:
            return Attention.forward(self, x, grid, return_attn, queries)
        bias = self.qkv.bias if self.qkv.bias is not None else x.new_zeros(self.qkv.out_features)
        return self.proj(_FusedAttention.apply(x, self.qkv.weight.t(), bias, self.num_heads)), None

    patched = [m for m in model.modules() if isinstance(m, Attention) and m.rel_pos is None]
    for m in patched:
        m.forward = types.MethodType(forward, m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _load_source(checkpoint: str | Path, dynamic_size: bool) -> tuple[nn.Module, dict[str, Any]]:
    if str(checkpoint).endswith((".onnx", ".xml")):
        raise VitkitError(f"{checkpoint} is already an exported file; export from the checkpoint it came from")
    model, meta = load_checkpoint(checkpoint)
    if dynamic_size:
        _check_dynamic_size(model)
    return model, meta


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17, check: bool = True,
                dynamic_size: bool = False) -> dict:
    """Write `out` (.onnx) for batches of any size at the checkpoint's image size or, with `dynamic_size`,
    at any height and width that are multiples of the patch size; then compare onnxruntime's logits with
    PyTorch's (for a dynamic size, at the checkpoint's size and at a larger, non-square one)."""
    model, meta = _load_source(checkpoint, dynamic_size)
    out = Path(out)
    meta = {**meta, "dynamic_size": dynamic_size, "machine": describe()}
    atomic_write(out, lambda tmp: _write_onnx(model, meta, tmp, opset, dynamic_size))
    result = _describe(model, out, opset, dynamic_size)
    if check:
        sizes = _check_sizes(model, dynamic_size)
        result["max_abs_diff"] = max(onnx_max_abs_diff(model, out, _probe(model, size=size)) for size in sizes)
        result["checked_sizes"] = sizes
        if result["max_abs_diff"] > 1e-4:
            raise VitkitError(f"{out}: onnxruntime differs from PyTorch by {result['max_abs_diff']:.2e} (> 1e-4)")
    return result


def export_int8(checkpoint: str | Path, out: str | Path, opset: int = 17, check: bool = True,
                fuse: str = "attention", dynamic_size: bool = False) -> dict:
    """Write `out` (.onnx) with int8 weights for every matrix multiply (per output channel) and int8
    activations quantised on the fly; normalisation, softmax and the patch convolution stay fp32.
    `fuse="attention"` makes each self-attention onnxruntime's fused `QAttention` (1.1-1.2x faster than
    plain operators in benchmarks/int8.py). The check reports the largest logit difference and top-1
    agreement with PyTorch on random input. `dynamic_size` as for `export_onnx`."""
    if fuse not in FUSIONS:
        raise VitkitError(f"int8 fuse={fuse!r}: choose one of {', '.join(FUSIONS)}")
    ort = onnxruntime()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, meta = _load_source(checkpoint, dynamic_size)
    out = Path(out)
    meta = {**meta, "quantization": f"dynamic int8 (onnxruntime), per-channel weights, fuse={fuse}",
            "dynamic_size": dynamic_size, "machine": describe()}

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            fp32 = os.path.join(d, "fp32.onnx")
            with _onnxruntime_attention(model) if fuse != "none" else contextlib.nullcontext():
                _write_onnx(model, meta, fp32, opset, dynamic_size)
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # quiets its advice to pre-process the graph
            try:
                quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul", "Attention"],
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            finally:
                root.setLevel(level)
        proto = onnx.load(tmp)
        if not any(p.key == META_KEY for p in proto.metadata_props):
            entry = proto.metadata_props.add()
            entry.key, entry.value = META_KEY, json.dumps(meta)
            onnx.save(proto, tmp)

    atomic_write(out, write)
    result = _describe(model, out, opset, dynamic_size)
    if check:
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got, want = [], []
        for size in _check_sizes(model, dynamic_size):
            x = _probe(model, 16, size)
            got.append(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]))
            with torch.inference_mode():
                want.append(model(x))
        got, want = torch.cat(got), torch.cat(want)
        result["max_abs_diff"] = float((got - want).abs().max())
        result["top1_agreement"] = float((got.argmax(-1) == want.argmax(-1)).float().mean())
        result["checked_sizes"] = _check_sizes(model, dynamic_size)
    return result


def _check_sizes(model: nn.Module, dynamic_size: bool) -> list[tuple[int, int]]:
    """The checkpoint's image size and, for a dynamic-size file, one with a larger grid of another shape."""
    h, w = model.cfg.img_size
    if not dynamic_size:
        return [(h, w)]
    gh, gw = model.cfg.grid_size()
    return [(h, w), (h // gh * (gh + 3), w // gw * (gw + 1))]


def _probe(model: nn.Module, batch: int = 3, size: tuple[int, int] | None = None) -> torch.Tensor:
    return torch.randn(batch, model.cfg.in_chans, *(size or model.cfg.img_size))


def _describe(model: nn.Module, out: Path, opset: int, dynamic_size: bool = False) -> dict:
    size = ["height", "width"] if dynamic_size else list(model.cfg.img_size)
    return {"path": str(out), "input": ["batch", model.cfg.in_chans, *size], "opset": opset}


def onnx_max_abs_diff(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    session = onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    return float(abs(got - want).max())


OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
# How NNCF quantises an int8 IR. "fast": symmetric int8 activations (NNCF's PERFORMANCE preset) and no
# SmoothQuant. "accurate": NNCF's defaults for transformers (asymmetric activations, SmoothQuant moving
# outlier channels of the activations into the weights), which cost time where bf16 is fast: on a Xeon
# with AMX, ViT-S/16 at batch 32 ran at 1.22x the bf16 file with "fast" against 1.03x with "accurate"
# (in-process round-robin, 2026-12-07, docs/export.md); on the MNIST model both lost nothing (98.99% ->
# 99.01% and 98.99%). "mlp": "fast" for the MLP layers alone (attention and head in floating point),
# faster for narrow models. `vitkit export` (auto) writes the faster of "fast" and "mlp" here and falls
# back to "accurate" where that loses more than --max-accuracy-drop on --data (cli/export.py).
INT8_SCHEMES = ("auto", "fast", "mlp", "accurate")
# auto: both of these quantised, the one that runs faster on this machine written (`_faster_here`)
SPEED_CANDIDATES = ("fast", "mlp")


def calibration_images(data: str, meta: dict[str, Any], count: int = 300, seed: int = 0) -> list[torch.Tensor]:
    """`count` training images of `data`, the same share of every class (a seeded draw), prepared with
    the checkpoint's own preprocessing: what post-training quantisation measures activation ranges on."""
    from .config import AugConfig, DataConfig
    from .data.datasets import ImageDataset, build_data, stratified_split
    from .data.transforms import Preprocess
    from .rng import SPLIT_CALIBRATION

    if count < 1:
        raise VitkitError(f"--calibration-images {count}: need at least 1")
    if "preprocess" not in meta:
        raise VitkitError("the checkpoint records no preprocessing, so calibration images cannot be prepared")
    pre = Preprocess.from_dict(meta["preprocess"])
    bundle = build_data(DataConfig(spec=data), AugConfig(), pre.img_size, pre.in_chans, seed)
    split = (bundle.val if bundle.stream is not None else bundle.train).split  # streamed shards: their val set
    if count < len(split.labels):
        split = split.subset(stratified_split(split.labels, count / len(split.labels), seed, SPLIT_CALIBRATION)[1])
    ds = ImageDataset(split, pre, None, seed, strict=False)
    return [x.unsqueeze(0) for x, _, _ in (ds[i] for i in range(len(ds))) if x is not None][:count]


def _quantize_ir(ir: Any, images: list[torch.Tensor], scheme: str) -> Any:
    """NNCF post-training int8 quantisation of an OpenVINO model, as OpenVINO documents it for
    transformers (ModelType.TRANSFORMER keeps softmax, LayerNorm and GELU in floating point), with the
    settings of `scheme` (INT8_SCHEMES)."""
    try:
        import nncf
        from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                           AdvancedSmoothQuantParameters)
    except ImportError:
        raise VitkitError("int8 OpenVINO files need NNCF: pip install 'vitkit[openvino]'") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)  # its progress notes; vitkit prints the outcome
    settings: dict[str, Any] = {}
    if scheme in ("fast", "mlp"):
        no_smoothing = AdvancedSmoothQuantParameters(matmul=-1)  # NNCF's way to switch SmoothQuant off
        settings = {"preset": nncf.QuantizationPreset.PERFORMANCE,
                    "advanced_parameters": AdvancedQuantizationParameters(smooth_quant_alphas=no_smoothing)}
    if scheme == "mlp":  # the ONNX graph names its nodes after vitkit's modules: /blocks.N/attn/..., /head/...
        settings["ignored_scope"] = nncf.IgnoredScope(patterns=[r".*/attn/.*", r".*/head/.*"], validate=False)
    dataset = nncf.Dataset([x.numpy() for x in images])
    return nncf.quantize(ir, dataset, subset_size=len(images), model_type=nncf.ModelType.TRANSFORMER, **settings)


def _faster_here(files: dict[str, Path], image_shape: tuple[int, ...], batch: int = 32,
                 rounds: int = 5) -> dict[str, float]:
    """Images per second of each IR at `batch`, as vitkit's engine runs it here (median of `rounds` turns
    taken in alternation: speed drifts within minutes). Which layers pay to run in int8 depends on the
    model's width and the CPU: on the AMX Xeon (2026-12-07, docs/export.md) the MNIST model (width 128)
    ran 1.12x bf16 with its MLPs alone in int8 and 1.03x with every projection in int8, ViT-S/16 1.13x
    and 1.26x."""
    import statistics
    import time

    from .engines.openvino import OpenVINOModel

    models = {k: OpenVINOModel(f) for k, f in files.items()}
    x = torch.randn(batch, *image_shape)
    for m in models.values():
        m(x), m(x)  # the second call compiles this batch shape (static shapes), then it is warm
    rates: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            count, t0 = 0, time.perf_counter()
            while count < 2 or time.perf_counter() - t0 < 0.3:
                m(x)
                count += 1
            rates[k].append(count * batch / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def export_openvino(checkpoint: str | Path, out: str | Path, precision: str = "fp32", opset: int = 17,
                    check: bool = True, data: str | None = None, calibration_count: int = 300,
                    dynamic_size: bool = False, int8_scheme: str = "auto") -> dict:
    """Write an OpenVINO IR (`out` .xml and its .bin) converted from vitkit's ONNX graph, with vitkit's
    metadata (preprocessing, classes, the machine) in its rt_info. The weights stay fp32; `precision` is
    stored: fp32 files run in vitkit's automatic precision where they run, bf16 ones always in bf16
    (OpenVINO casts the weights when it compiles for bf16); int8 quantises with NNCF (`int8_scheme`,
    INT8_SCHEMES; auto: fast and mlp both, and the file gets the one that runs a batch of 32 faster on
    this machine), calibrated on `calibration_count` training images of `data`. The check compares OpenVINO
    forced to f32 with PyTorch (fails above 1e-4); for int8 it reports the largest difference and the
    top-1 agreement on random input. `dynamic_size` as for `export_onnx` (int8: calibrated at the
    checkpoint's size)."""
    import shutil

    from .engines.openvino import RT_INFO, OpenVINOModel, openvino
    from .files import fsync_dir

    if precision not in OPENVINO_PRECISIONS:
        raise VitkitError(f"--precision {precision} for an OpenVINO file: {', '.join(OPENVINO_PRECISIONS)}")
    if int8_scheme not in INT8_SCHEMES:
        raise VitkitError(f"--int8-scheme {int8_scheme}: {', '.join(INT8_SCHEMES)}")
    if precision == "int8" and not data:
        raise VitkitError("--precision int8: give --data SPEC, the images the int8 ranges are calibrated on "
                          f"({calibration_count} training images, every class alike)")
    ov = openvino()
    out = Path(out)
    if out.suffix != ".xml":
        raise VitkitError(f"{out}: an OpenVINO IR is written as NAME.xml (with NAME.bin beside it)")
    model, meta = _load_source(checkpoint, dynamic_size)
    images = calibration_images(data, meta, calibration_count) if precision == "int8" else []
    meta = {**meta, "dynamic_size": dynamic_size, "machine": describe(), "openvino_precision": precision}
    schemes = (SPEED_CANDIDATES if int8_scheme == "auto" else (int8_scheme,)) if images else (None,)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    speed: dict[str, float] = {}
    try:
        _write_onnx(model, meta, str(work / "model.onnx"), opset, dynamic_size)
        written = {}
        for scheme in schemes:
            ir, file_meta = ov.convert_model(str(work / "model.onnx")), meta
            if scheme:
                ir = _quantize_ir(ir, images, scheme)
                how = f"{scheme} scheme, the faster here" if len(schemes) > 1 else f"{scheme} scheme"
                file_meta = {**meta, "int8_scheme": scheme, "quantization": (
                    f"static int8 (NNCF post-training, {how}), calibrated on {len(images)} images of {data}")}
            ir.set_rt_info(json.dumps(file_meta), RT_INFO)
            (work / (scheme or "ir")).mkdir()
            written[scheme] = work / (scheme or "ir") / out.name
            ov.save_model(ir, str(written[scheme]), compress_to_fp16=False)
        chosen = schemes[0]
        if len(written) > 1:
            pre = meta["preprocess"]  # calibration needed it: it is there
            speed = _faster_here(written, (pre["in_chans"], *pre["img_size"]))
            chosen = max(speed, key=speed.get)
        for name in (out.with_suffix(".bin").name, out.name):  # the weights first: an .xml in place always has its .bin
            os.replace(written[chosen].parent / name, out.parent / name)
        fsync_dir(out.parent)
    except OSError as e:
        raise VitkitError(f"could not write {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = _describe(model, out, opset, dynamic_size)
    if images:
        result["int8_scheme"], result["int8_speed"] = chosen, speed
    if check:
        compiled = OpenVINOModel(out, precision="fp32")
        got, want = [], []
        for size in _check_sizes(model, dynamic_size):
            x = _probe(model, 16 if images else 3, size)
            got.append(compiled(x))
            with torch.inference_mode():
                want.append(model(x))
        got, want = torch.cat(got), torch.cat(want)
        result["max_abs_diff"] = float((got - want).abs().max())
        result["checked_sizes"] = _check_sizes(model, dynamic_size)
        if images:
            result["top1_agreement"] = float((got.argmax(-1) == want.argmax(-1)).float().mean())
        elif result["max_abs_diff"] > 1e-4:
            raise VitkitError(f"{out}: OpenVINO (f32) differs from PyTorch by {result['max_abs_diff']:.2e} (> 1e-4)")
    return result
