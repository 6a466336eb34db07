"""`vitkit export --format onnx`: onnxruntime gives PyTorch's logits, for any batch size."""

import pytest
import torch

from vitkit.checkpoint import model_meta, save_weights
from vitkit import VitkitError
from vitkit.cli import main
from vitkit.export import export_onnx, onnx_max_abs_diff
from vitkit.models import create_model

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("kw", [{}, {"global_pool": "avg", "pos_embed": "learn2d"}, {"pos_embed": "rel"},
                                {"representation_size": 24}])
def test_onnx_matches_pytorch_at_any_batch(tmp_path, kw):
    torch.manual_seed(0)
    model = create_model("vit_digits_patch4_8", img_size=16, **kw)
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a zero head would hide any difference
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    r = export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx")
    assert r["max_abs_diff"] <= 1e-4
    model.eval()
    for batch in (1, 7):
        assert onnx_max_abs_diff(model, tmp_path / "m.onnx", torch.randn(batch, 1, 16, 16)) <= 1e-4


def test_onnx_model_splits_a_batch_over_threads_with_the_same_logits(tmp_path):
    from vitkit.engines.onnx import OnnxModel
    torch.manual_seed(0)
    model = create_model("vit_digits_patch4_8", img_size=16)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx")
    split, whole = OnnxModel(tmp_path / "m.onnx", threads=2), OnnxModel(tmp_path / "m.onnx", threads=2, split=False)
    assert (split.parts, whole.parts) == (2, 1)
    x = torch.randn(7, 1, 16, 16)
    assert torch.allclose(split(x), whole(x), atol=1e-5)
    assert split(x[:1]).shape == (1, model.num_classes)


def test_onnx_model_runs_cache_sized_slices_with_the_same_logits(tmp_path, monkeypatch):
    from vitkit.engines.onnx import OnnxModel, images_per_run
    from vitkit.models import model_config
    from vitkit.models.config import ResNetConfig
    mib = 1 << 20
    # one [images, tokens, D] fp32 activation within a third of the L2: S/16 303 KB an image, B/16 605 KB
    assert [images_per_run(model_config(n), (224, 224), 2 * mib)
            for n in ("vit_small_patch16_224", "vit_base_patch16_224")] == [2, 1]
    assert images_per_run(model_config("vit_mnist_patch7_28"), (28, 28), 2 * mib) == 80
    assert images_per_run(model_config("vit_base_patch16_224"), (224, 224), 512 << 10) == 1  # never 0
    assert images_per_run(ResNetConfig(), (224, 224), 2 * mib) is None  # a CNN: the whole slice
    torch.manual_seed(0)
    model = create_model("vit_digits_patch4_8", img_size=16)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx")
    runs = []
    sliced, whole = OnnxModel(tmp_path / "m.onnx", threads=1, run_images=3), OnnxModel(tmp_path / "m.onnx", threads=1)
    real = sliced.session.run
    monkeypatch.setattr(sliced.session, "run", lambda out, feed: runs.append(len(feed["images"])) or real(out, feed),
                        raising=False)
    x = torch.randn(7, 1, 16, 16)
    assert torch.allclose(sliced(x), whole(x), atol=1e-5)
    assert runs == [3, 3, 1]

def test_onnx_model_runs_early_images_while_later_ones_are_still_coming(tmp_path, monkeypatch):
    """A server hands its batch over image by image as it decodes them: the other thread runs the first
    images meanwhile, and the logits are those of one batch, in order."""
    import threading
    from vitkit.engines.onnx import OnnxModel
    torch.manual_seed(0)
    model = create_model("vit_digits_patch4_8", img_size=16)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx")
    streamed, whole = OnnxModel(tmp_path / "m.onnx", threads=2, run_images=2), OnnxModel(tmp_path / "m.onnx", threads=1)
    runs, started = [], threading.Event()
    real = streamed.session.run

    def recorded(out, feed):
        runs.append((threading.current_thread().name, len(feed["images"])))
        started.set()
        return real(out, feed)
    monkeypatch.setattr(streamed.session, "run", recorded, raising=False)
    x = torch.randn(7, 1, 16, 16)

    def pieces():
        for k in range(len(x)):
            if k == 4:
                assert started.wait(30)  # a run began before the fifth image existed
            yield x[k:k + 1]
    assert torch.allclose(streamed.run_pieces(pieces(), len(x)), whole(x), atol=1e-5)
    assert sorted(n for _, n in runs) == [1, 2, 2, 2]
    assert runs[0][0].startswith("vitkit-onnx")  # the helper thread, while this one still produced images
    assert streamed.run_pieces(iter([]), 4).shape == (0, model.num_classes)
    assert torch.allclose(streamed(x), whole(x), atol=1e-5)  # a whole batch goes the same way


def test_export_command(tmp_path, capsys):
    model = create_model("vit_digits_patch4_8")
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    assert main(["export", "--checkpoint", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "onnxruntime vs PyTorch max |diff|" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(tmp_path / "w.safetensors"), "--format", "int8",
                 "--out", str(tmp_path / "q.onnx")]) == 0
    assert "top-1 agreement" in capsys.readouterr().out
    import onnx
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops  # the matrix multiplies run in int8


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": False, "global_pool": "avg"}])
def test_fused_attention_graph_computes_the_models_attention(tmp_path, kw):
    """The int8 file's attention is onnxruntime's `Attention` op fed our fused qkv weights: in fp32 it must
    give PyTorch's logits (weight layout, head split and scaling all match)."""
    import onnx

    from vitkit.export import _onnxruntime_attention, _write_onnx
    torch.manual_seed(0)
    model = create_model("vit_digits_patch4_8", img_size=16, **kw).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    with _onnxruntime_attention(model):
        _write_onnx(model, {}, str(tmp_path / "f.onnx"), 17)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "f.onnx")).graph.node]
    # With a class token the last block asks only its query row, so it stays plain products and one Softmax.
    last_plain = model.cfg.global_pool == "token"
    assert ops.count("Attention") == model.cfg.depth - last_plain and ops.count("Softmax") == last_plain
    assert onnx_max_abs_diff(model, tmp_path / "f.onnx", torch.randn(5, 1, 16, 16)) <= 1e-4
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model(x), model(x))  # the patch is undone: the model is the plain module again
    assert "forward" not in vars(model.blocks[0].attn)


def test_int8_fused_attention_is_as_accurate_as_plain_int8(tmp_path):
    import onnx

    from vitkit.export import export_int8
    torch.manual_seed(0)
    model = create_model("vit_digits_patch4_8", img_size=16)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    diffs = {}
    for fuse, expect in (("none", {"MatMulInteger"}), ("attention", {"QAttention"})):
        r = export_int8(tmp_path / "w.safetensors", tmp_path / f"{fuse}.onnx", fuse=fuse)
        assert expect <= {n.op_type for n in onnx.load(str(tmp_path / f"{fuse}.onnx")).graph.node}
        diffs[fuse] = r["max_abs_diff"]
    assert diffs["attention"] <= 1.5 * diffs["none"] + 1e-3
    with pytest.raises(Exception, match="fuse='fast'"):
        export_int8(tmp_path / "w.safetensors", tmp_path / "bad.onnx", fuse="fast")
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("fuse", ["attention", "none"])
def test_int8_file_multiplies_every_weight_in_int8(tmp_path, fuse):
    """The class-token-only last block slices W_q and W_k,W_v out of the fused qkv weight: the slices must
    be constants in the file, or the quantiser leaves those products in fp32 and slices the weight on every run."""
    import onnx

    from vitkit.export import export_int8
    model = create_model("vit_digits_patch4_8", img_size=16)
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    export_int8(tmp_path / "w.safetensors", tmp_path / "q.onnx", fuse=fuse, check=False)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    constant = {t.name for t in graph.initializer}  # and, in graph order, whatever is computed from constants only
    for n in graph.node:
        if all(i in constant or not i for i in n.input):
            constant.update(n.output)
    fp32_products = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & constant]
    assert fp32_products == []
    weights = {t.name for t in graph.initializer if len(t.dims) == 2}
    assert not [n.name for n in graph.node if n.op_type == "Slice" and n.input[0] in weights]


@pytest.mark.parametrize("kw", [{}, {"global_pool": "avg", "pos_embed": "learn2d"}, {"pos_embed": "sincos"},
                                {"pos_embed": "none"}, {"resample": "official"}, {"pos_embed": "rel"}])
def test_dynamic_size_file_runs_any_grid_like_pytorch(tmp_path, kw):
    """`--dynamic-size`: one file for any height and width, the position table resampled in 2D inside it
    exactly as the PyTorch model resamples it (fine-tuning at a higher resolution, section 3.2)."""
    import onnx
    torch.manual_seed(0)
    model = create_model("vit_digits_patch4_8", img_size=16, **kw)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    r = export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", dynamic_size=True)
    assert r["input"] == ["batch", 1, "height", "width"] and r["max_abs_diff"] <= 1e-4
    assert r["checked_sizes"] == [(16, 16), (28, 20)]
    dims = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]
    model.eval()
    for batch, h, w in ((1, 16, 16), (2, 8, 12), (3, 32, 24), (2, 4, 40)):
        assert onnx_max_abs_diff(model, tmp_path / "m.onnx", torch.randn(batch, 1, h, w)) <= 1e-4, (h, w)


def test_dynamic_size_hybrid_pads_like_pytorch_at_every_size(tmp_path):
    """The hybrid's ResNet pads each strided convolution "SAME" for the size it gets: odd and even feature maps
    need different padding, which the file must compute from the input, not copy from the export."""
    torch.manual_seed(0)
    model = create_model("vit_mnist_r_28", resnet_width=16)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    assert export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", dynamic_size=True)["max_abs_diff"] <= 1e-4
    model.eval()
    for size in (28, 27, 30, 84):  # the stride-2 stem convolution sees 27 (odd), its max-pool 15 (odd) at 30
        assert onnx_max_abs_diff(model, tmp_path / "m.onnx", torch.randn(2, 1, size, size)) <= 1e-4, size


def test_dynamic_size_int8_file_runs_another_grid(tmp_path):
    import onnxruntime as ort

    from vitkit.export import export_int8
    torch.manual_seed(0)
    model = create_model("vit_digits_patch4_8", img_size=16)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    fixed = export_int8(tmp_path / "w.safetensors", tmp_path / "fixed.onnx")
    r = export_int8(tmp_path / "w.safetensors", tmp_path / "q.onnx", dynamic_size=True)
    assert r["input"] == ["batch", 1, "height", "width"] and r["checked_sizes"] == [(16, 16), (28, 20)]
    assert r["max_abs_diff"] <= 2 * fixed["max_abs_diff"] + 1e-3  # int8 error, not a resampling error
    x = torch.randn(4, 1, 24, 32)
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        want = model.eval()(x)
    assert got.shape == (4, model.num_classes)
    assert float((torch.from_numpy(got) - want).abs().max()) <= 2 * fixed["max_abs_diff"] + 1e-3


def test_dynamic_size_refuses_antialiased_resampling(tmp_path):
    model = create_model("vit_digits_patch4_8", resample_antialias=True)
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    with pytest.raises(Exception, match="--dynamic-size: not for this model: ONNX has no antialiased"):
        export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", dynamic_size=True)
    assert not (tmp_path / "m.onnx").exists()
    assert main(["export", "--checkpoint", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "m.onnx"),
                 "--dynamic-size"]) == 2


def test_export_reports_the_accuracy_the_file_costs(tmp_path, capsys):
    """`--data`: the checkpoint and the written file evaluated on the same real images, side by side."""
    import re

    from vitkit.evaluate import evaluate_checkpoint
    from vitkit.data.transforms import Preprocess
    torch.manual_seed(0)
    model = create_model("vit_digits_patch4_8")
    torch.nn.init.normal_(model.head.weight, std=0.5)
    pre = Preprocess((8, 8), 1, (0.5,), (0.5,)).to_dict()
    save_weights(tmp_path / "w.safetensors", model, model_meta(model, preprocess=pre))
    assert main(["export", "--checkpoint", str(tmp_path / "w.safetensors"), "--format", "int8",
                 "--out", str(tmp_path / "q.onnx"), "--data", "digits"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    got = re.fullmatch(r"digits \[test\] top-1: checkpoint ([\d.]+)% -> q\.onnx ([\d.]+)% \(([+-][\d.]+) points\)", line)
    assert got, line
    want = [100 * evaluate_checkpoint(p, "digits")["top1"] for p in (tmp_path / "w.safetensors", tmp_path / "q.onnx")]
    assert [float(got[1]), float(got[2])] == [round(w, 2) for w in want]


@pytest.mark.parametrize("path, isa, installed, int8, want", [
    ("m.xml", set(), True, False, "openvino"),
    ("m.onnx", {"avx2"}, True, False, "onnxruntime"),             # Zen 3: onnxruntime measured faster
    ("m.onnx", {"avx2", "avx512f"}, True, False, "openvino"),     # Xeon with AVX-512: OpenVINO measured faster
    ("m.onnx", {"avx2", "avx512f"}, False, False, "onnxruntime"),  # ... unless it is not installed
    ("m.onnx", {"avx2", "avx512f"}, True, True, "onnxruntime"),   # int8 files use onnxruntime's own operators
])
def test_the_automatic_runtime_follows_the_measured_rule(path, isa, installed, int8, want):
    from vitkit.load import decide_runtime
    runtime, why = decide_runtime(path, isa, installed, int8)
    assert runtime == want and why
    if not installed:
        assert "pip install 'vitkit[openvino]'" in why


@pytest.mark.parametrize("isa, installed, device, vit, want", [
    ({"avx2", "avx512f"}, True, "cpu", True, "openvino"),     # Xeon with AVX-512: OpenVINO measured faster
    ({"avx2", "avx512f"}, False, "cpu", True, "pytorch"),     # ... unless it is not installed
    ({"avx2"}, True, "cpu", True, "openvino"),                # Zen 3: faster on the same graph (.onnx)
    ({"neon"}, True, "cpu", True, "pytorch"),                 # other CPUs (ARM): not measured
    ({"avx2", "avx512f"}, True, "cuda", True, "pytorch"),     # OpenVINO's CPU plugin is for the CPU
    ({"avx2", "avx512f"}, True, "cpu", False, "pytorch"),     # CNNs: not measured
])
def test_the_automatic_runtime_of_checkpoints_follows_the_measured_rule(isa, installed, device, vit, want):
    from vitkit.load import decide_checkpoint_runtime
    runtime, why = decide_checkpoint_runtime(isa, installed, device, vit)
    assert runtime == want and why
    if not installed:
        assert "pip install 'vitkit[openvino]'" in why


def test_runtime_flags_that_do_not_fit_the_model_are_one_line(tmp_path, monkeypatch):
    from vitkit.load import checkpoint_runtime, load
    model = create_model("vit_mnist_patch7_28")
    save_weights(tmp_path / "w.safetensors", model, model_meta(model))
    with pytest.raises(VitkitError, match="--runtime onnxruntime runs exported files"):
        load(tmp_path / "w.safetensors", runtime="onnxruntime")
    with pytest.raises(VitkitError, match="--compile runs on PyTorch only"):
        checkpoint_runtime("openvino", model, torch.device("cpu"), "fp32", compile=True)
    with pytest.raises(VitkitError, match="--precision fp16 runs on PyTorch only"):
        checkpoint_runtime("openvino", model, torch.device("cpu"), "fp16", compile=False)
    assert checkpoint_runtime("auto", model, torch.device("cpu"), "fp32", compile=True)[0] == "pytorch"
    monkeypatch.setenv("VITKIT_AUTO_RUNTIME", "pytorch")
    assert checkpoint_runtime("auto", model, torch.device("cpu"), "fp32", compile=False) == (
        "pytorch", "auto, pinned by VITKIT_AUTO_RUNTIME")
    monkeypatch.setenv("VITKIT_AUTO_RUNTIME", "tensorrt")
    with pytest.raises(VitkitError, match="VITKIT_AUTO_RUNTIME='tensorrt'"):
        checkpoint_runtime("auto", model, torch.device("cpu"), "fp32", compile=False)
    export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", check=False)
    with pytest.raises(VitkitError, match="--runtime pytorch runs checkpoints"):
        load(tmp_path / "m.onnx", runtime="pytorch")
