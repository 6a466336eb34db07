"""OpenVINO as a runtime: the IR vitkit writes carries its metadata and matches PyTorch, eval and predict
run it and any exported .onnx file, and a missing openvino is a one-line error."""

import json
import os

import pytest
import torch

from helpers import train_small_digits_run
from vitkit import VitkitError
from vitkit.cli import main
from vitkit.load import load
from vitkit.machine import describe

# OpenVINO's runtime (its TBB threads) stays out of the main test process, where the suite later forks
# loader workers and compiles with inductor (one CI run crashed after it was loaded there):
# tests/test_openvino_isolated.py runs this file in a process of its own.
if os.environ.get("VITKIT_OPENVINO_TESTS") != "1":
    pytest.skip("run in its own process by tests/test_openvino_isolated.py", allow_module_level=True)
pytest.importorskip("openvino")
pytest.importorskip("onnx")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Checkpoints converted for OpenVINO go to each test's own cache, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_small_digits_run(tmp_path_factory.mktemp("ov") / "run", epochs=3)


def test_the_ir_matches_pytorch_and_carries_vitkit_metadata(run, tmp_path, capsys):
    ir = tmp_path / "model.xml"
    assert main(["export", "--checkpoint", str(run), "--format", "openvino", "--out", str(ir)]) == 0
    assert "OpenVINO (f32) vs PyTorch max |diff|" in capsys.readouterr().out
    assert ir.is_file() and ir.with_suffix(".bin").is_file() and not list(tmp_path.glob(".*"))
    loaded = load(ir)
    assert loaded.meta["classes"] == [str(i) for i in range(10)] and loaded.meta["machine"]["cpu"] == describe()["cpu"]
    reference = load(run)
    x = torch.randn(7, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), reference.model(x), atol=1e-4, rtol=0)
    from vitkit.engines.openvino import OpenVINOModel
    default = OpenVINOModel(ir, precision="openvino")  # OpenVINO's own choice (bf16 on CPUs that compute it)
    with torch.inference_mode():
        spread = (reference.model(x).max() - reference.model(x).min()).item()
        assert (default(x) - reference.model(x)).abs().max().item() <= 0.03 * spread  # the bf16 tolerance


def test_a_shape_that_comes_back_runs_on_its_own_static_compilation(run, tmp_path):
    from vitkit.engines import openvino as engine
    ir = tmp_path / "m.xml"
    assert main(["export", "--checkpoint", str(run), "--format", "openvino", "--out", str(ir), "--no-check"]) == 0
    model, reference = engine.OpenVINOModel(ir, precision="fp32"), load(run).model
    batches = [torch.randn(n, 1, 8, 8) for n in (5, 5, 5, 3, 4, 4, 6, 6, 2, 2, 7)]
    with torch.inference_mode():
        for x in batches:
            torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=0)
    # 5, 4 and 6 came back and got their own; 3 came once; 2 came back after the limit was reached
    assert sorted(s[0] for s in model._by_shape) == [4, 5, 6] and engine.MAX_STATIC_SHAPES == 3
    one = engine.OpenVINOModel(ir, precision="fp32", static_shapes=False)
    one(batches[0]), one(batches[0])
    assert not one._by_shape
    one.compile_for((2, 1, 8, 8))  # what a server does for its batch sizes before it is ready
    assert list(one._by_shape) == [(2, 1, 8, 8)]
    with pytest.raises(VitkitError, match=r"cannot run input shape \[2, 3, 8, 8\]"):
        one.compile_for((2, 3, 8, 8))


def test_a_batch_that_divides_over_the_threads_runs_as_slices_with_the_same_logits(run, tmp_path):
    from vitkit.engines import openvino as engine
    ir = tmp_path / "m.xml"
    assert main(["export", "--checkpoint", str(run), "--format", "openvino", "--out", str(ir), "--no-check"]) == 0
    reference, threads = load(run).model, torch.get_num_threads()
    torch.set_num_threads(2)  # one slice per thread: two on any machine
    try:
        split, whole = engine.OpenVINOModel(ir, precision="fp32"), engine.OpenVINOModel(ir, precision="fp32", split=False)
    finally:
        torch.set_num_threads(threads)
    assert split.parts == 2 and whole.parts == 1
    split.pin_shapes([(6, 1, 8, 8), (5, 1, 8, 8)])
    whole.pin_shapes([(6, 1, 8, 8)])
    assert isinstance(split._by_shape[6, 1, 8, 8], engine._Streams)  # 6 = 2 slices of 3
    assert not isinstance(split._by_shape[5, 1, 8, 8], engine._Streams)  # 5 does not divide: one request
    assert not isinstance(whole._by_shape[6, 1, 8, 8], engine._Streams)
    with torch.inference_mode():
        for n in (6, 5, 6):
            x = torch.randn(n, 1, 8, 8)
            torch.testing.assert_close(split(x), reference(x), atol=1e-4, rtol=0)
            if n == 6:
                torch.testing.assert_close(split(x), whole(x), atol=1e-5, rtol=0)
        a, b = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
        out_a = split(a)
        split(b)  # the next call does not overwrite what the last one returned
        torch.testing.assert_close(out_a, reference(a), atol=1e-4, rtol=0)


def test_eval_and_predict_run_the_ir_and_the_onnx_file_on_openvino(run, tmp_path, capsys):
    ir, onnx_file = tmp_path / "m.xml", tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run), "--format", "openvino", "--out", str(ir), "--no-check"]) == 0
    assert main(["export", "--checkpoint", str(run), "--out", str(onnx_file), "--no-check"]) == 0
    capsys.readouterr()
    accs = []
    for args in (["--checkpoint", str(run)], ["--checkpoint", str(ir)],
                 ["--checkpoint", str(onnx_file), "--runtime", "openvino"],
                 ["--checkpoint", str(onnx_file), "--runtime", "onnxruntime"]):
        assert main(["eval", *args, "--data", "digits", "--json"]) == 0
        accs.append(json.loads(capsys.readouterr().out)["top1"])
    assert max(accs) - min(accs) <= 0.003, accs  # one image of 359 at most
    from PIL import Image
    Image.new("L", (8, 8), 200).save(tmp_path / "d.png")
    assert main(["predict", "--checkpoint", str(ir), str(tmp_path / "d.png"), "--json"]) == 0
    via_ir = json.loads(capsys.readouterr().out)[0]["top"][0]["class"]
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "d.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] == via_ir


def test_runtime_mistakes_and_a_missing_openvino_are_one_line(run, tmp_path, monkeypatch):
    ir = tmp_path / "m.xml"
    main(["export", "--checkpoint", str(run), "--format", "openvino", "--out", str(ir), "--no-check"])
    with pytest.raises(VitkitError, match="is an OpenVINO IR: run it with --runtime openvino"):
        load(ir, runtime="onnxruntime")
    with pytest.raises(VitkitError, match="--compile runs on PyTorch only"):
        load(run, runtime="openvino").for_inference(compile=True, runtime="openvino")
    (tmp_path / "bad.xml").write_text("<not an IR")
    with pytest.raises(VitkitError, match="bad.xml: not a loadable OpenVINO model"):
        load(tmp_path / "bad.xml")
    with pytest.raises(VitkitError, match="NAME.xml"):
        from vitkit.export import export_openvino
        export_openvino(run, tmp_path / "m.ir")
    import builtins
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "openvino" else real_import(name, *a, **k))
    with pytest.raises(VitkitError, match=r"pip install 'vitkit\[openvino\]'"):
        load(ir)


def test_int8_ir_is_calibrated_on_real_images_and_keeps_accuracy(run, tmp_path, capsys):
    ir = tmp_path / "q.xml"
    assert main(["export", "--checkpoint", str(run), "--format", "openvino", "--precision", "int8",
                 "--data", "digits", "--calibration-images", "120", "--out", str(ir)]) == 0
    printed = capsys.readouterr().out
    before, after = (float(v) for v in
                     __import__("re").search(r"checkpoint ([\d.]+)% -> q.xml ([\d.]+)%", printed).groups())
    assert abs(before - after) <= 1.0, printed  # int8 within 1 point on digits' 359 test images
    meta = load(ir).meta
    assert meta["openvino_precision"] == "int8" and "calibrated on 120 images of digits" in meta["quantization"]
    assert meta["int8_scheme"] in ("fast", "mlp", "accurate") and meta["int8_scheme"] in meta["quantization"]
    assert f"wrote {meta['int8_scheme']}" in printed  # auto: the rates of both candidates, and the choice
    weights = __import__("openvino").Core().read_model(str(ir)).get_ops()
    assert any(op.get_type_name() == "FakeQuantize" or "int8" in str(op.get_output_element_type(0)) for op in weights)


def test_int8_auto_writes_the_accurate_scheme_where_the_fast_one_loses_accuracy(run, tmp_path, capsys, monkeypatch):
    import vitkit.evaluate as evaluate
    real = evaluate.evaluate_checkpoint

    def fast_loses_two_points(source, *args, **kwargs):
        result = real(source, *args, **kwargs)
        if str(source).endswith(".xml") and load(source).meta["int8_scheme"] != "accurate":
            result["top1"] -= 0.02
        return result

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fast_loses_two_points)
    ir = tmp_path / "q.xml"
    common = ["export", "--checkpoint", str(run), "--format", "openvino", "--precision", "int8", "--data", "digits",
              "--calibration-images", "60", "--out", str(ir), "--no-check"]
    assert main(common) == 0
    printed = capsys.readouterr().out
    assert __import__("re").search(r"the (fast|mlp) int8 scheme loses", printed) and "writing the accurate one" in printed
    assert printed.count("top-1: checkpoint") == 2 and load(ir).meta["int8_scheme"] == "accurate"
    assert main(common + ["--int8-scheme", "fast"]) == 0  # asked for by name: kept, whatever it costs
    assert "writing the accurate one" not in capsys.readouterr().out and load(ir).meta["int8_scheme"] == "fast"
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx"), "--int8-scheme", "fast"]) == 2
    assert "--int8-scheme fast: for --format openvino --precision int8" in capsys.readouterr().err
    assert main(common + ["--max-accuracy-drop", "-1"]) == 2
    assert "--max-accuracy-drop -1.0: a loss in points, >= 0" in capsys.readouterr().err


def test_int8_auto_writes_whichever_scheme_runs_faster_here(run, tmp_path, capsys, monkeypatch):
    """auto quantises every projection (fast) and the MLPs alone (mlp), times both here and writes the
    faster; mlp leaves the attention's weights in floating point."""
    import vitkit.export as export
    timed = []

    def rates(fast, mlp):
        return lambda files, shape: timed.append((sorted(files), shape)) or {"fast": fast, "mlp": mlp}
    common = ["export", "--checkpoint", str(run), "--format", "openvino", "--precision", "int8", "--data", "digits",
              "--calibration-images", "60", "--no-check"]
    for fast, mlp, want in ((1000.0, 2000.0, "mlp"), (3000.0, 2000.0, "fast")):
        monkeypatch.setattr(export, "_faster_here", rates(fast, mlp))
        assert main(common + ["--out", str(tmp_path / f"{want}.xml")]) == 0
        assert f"images/s at batch 32: fast {fast:,.0f}, mlp {mlp:,.0f}: wrote {want}" in capsys.readouterr().out
        assert load(tmp_path / f"{want}.xml").meta["int8_scheme"] == want
    assert timed == [(["fast", "mlp"], (1, 8, 8))] * 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["fast.bin", "fast.xml", "mlp.bin", "mlp.xml"]

    def quantised_weights(ir):
        ops = __import__("openvino").Core().read_model(str(ir)).get_ops()
        return {op.get_friendly_name().split("/")[2] for op in ops
                if "fq_weights" in op.get_friendly_name() and op.get_friendly_name().startswith("/blocks")}
    assert quantised_weights(tmp_path / "fast.xml") == {"attn", "mlp"}
    assert quantised_weights(tmp_path / "mlp.xml") == {"mlp"}


def test_calibration_draws_every_class_alike(run):
    from vitkit.export import calibration_images
    images = calibration_images("digits", load(run).meta, 100)
    assert len(images) == 100 and images[0].shape == (1, 1, 8, 8)
    assert calibration_images("digits", load(run).meta, 100)[5].equal(images[5])  # seeded: the same draw each time


def test_int8_ir_needs_calibration_data_and_dynamic_size_irs_run_at_other_sizes(run, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(run), "--format", "openvino", "--precision", "int8",
                 "--out", str(tmp_path / "q.xml")]) != 0
    assert "--precision int8: give --data SPEC" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
    assert main(["export", "--checkpoint", str(run), "--precision", "bf16", "--out", str(tmp_path / "m.onnx")]) != 0
    assert "for --format openvino" in capsys.readouterr().err
    ir = tmp_path / "d.xml"
    assert main(["export", "--checkpoint", str(run), "--format", "openvino", "--dynamic-size", "--out", str(ir)]) == 0
    assert "at 8x8, 20x12" in capsys.readouterr().out  # checked at its own size and a larger, other-shaped one
    reference, loaded = load(run).model, load(ir).model
    x = torch.randn(2, 1, 16, 24)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), reference(x), atol=1e-4, rtol=0)


def test_auto_runs_fp32_onnx_files_where_the_rule_says_and_int8_files_on_onnxruntime(run, tmp_path):
    from vitkit.load import decide_runtime
    from vitkit.machine import describe
    assert "VITKIT_AUTO_RUNTIME" not in os.environ
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "q.onnx"
    main(["export", "--checkpoint", str(run), "--out", str(fp32), "--no-check"])
    main(["export", "--checkpoint", str(run), "--format", "int8", "--out", str(int8), "--no-check"])
    want = decide_runtime(str(fp32), set(describe()["isa"]), True, False)[0]
    assert type(load(fp32).model).__name__ == {"openvino": "OpenVINOModel", "onnxruntime": "OnnxModel"}[want]
    assert type(load(int8).model).__name__ == "OnnxModel"
    from vitkit.engines.openvino import OpenVINOModel
    assert "f32" in OpenVINOModel(fp32).inference_precision.lower() or "float32" in OpenVINOModel(fp32).inference_precision.lower()


def test_fp32_files_on_openvino_run_in_vitkits_automatic_precision_unless_told(run, tmp_path, monkeypatch):
    """An fp32 file holds fp32 weights, like a checkpoint: on OpenVINO it runs in what `auto` picks on the
    machine that runs it (bf16 where bf16 pays), `--precision fp32|bf16` forces either; a bf16 IR stays bf16."""
    onnx_file, bf16_ir = tmp_path / "m.onnx", tmp_path / "b.xml"
    main(["export", "--checkpoint", str(run), "--out", str(onnx_file), "--no-check"])
    main(["export", "--checkpoint", str(run), "--format", "openvino", "--precision", "bf16", "--out", str(bf16_ir),
          "--no-check"])
    x = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        want = load(run).model(x)
    as_fp32 = load(onnx_file, runtime="openvino").for_inference()  # auto is pinned to fp32 in the tests
    assert as_fp32.precision == "fp32" and "pinned" in as_fp32.precision_reason
    torch.testing.assert_close(as_fp32.model(x), want, atol=1e-4, rtol=0)
    monkeypatch.setenv("VITKIT_AUTO_PRECISION", "bf16")  # a machine where auto picks bf16
    as_auto = load(onnx_file, runtime="openvino").for_inference()
    spread = (want.max() - want.min()).item()
    with torch.inference_mode():
        assert as_auto.precision == "bf16" and (as_auto.model(x) - want).abs().max().item() <= 0.03 * spread
        forced = load(onnx_file, runtime="openvino").for_inference("fp32")
        assert forced.precision == "fp32" and forced.precision_reason == "as asked"
        torch.testing.assert_close(forced.model(x), want, atol=1e-4, rtol=0)
    monkeypatch.setenv("VITKIT_AUTO_PRECISION", "fp32")
    assert load(bf16_ir).for_inference().precision == "bf16"  # exported for bf16: stays bf16
    assert load(bf16_ir).for_inference("fp32").precision == "fp32"
    with pytest.raises(VitkitError, match="runs on onnxruntime in the precision it was written in"):
        load(onnx_file, runtime="onnxruntime").for_inference("bf16")
    with pytest.raises(VitkitError, match="unknown precision 'bf61'"):
        load(onnx_file, runtime="openvino").for_inference("bf61")


def test_checkpoints_run_on_openvino_converted_once_and_cached(run, tmp_path, monkeypatch, capsys):
    import tempfile

    import openvino as ov
    from vitkit.checkpoint import load_weights, save_weights
    from vitkit.engines.openvino import OpenVINOModel
    from vitkit.run_dir import RunDir

    x = torch.randn(5, 1, 8, 8)
    reference = load(run).model
    with torch.inference_mode():
        want = reference(x)
    ready = load(run, runtime="openvino").for_inference("fp32", runtime="openvino")
    assert isinstance(ready.model, OpenVINOModel) and ready.runtime == "openvino" and ready.precision == "fp32"
    torch.testing.assert_close(ready.model(x), want, atol=1e-4, rtol=0)
    cache = tmp_path / "cache" / "vitkit" / "openvino"
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and entries[0].endswith(".bin") and entries[1].endswith(".xml")  # no temporaries
    assert load(cache / entries[1]).meta["classes"] == [str(i) for i in range(10)]

    def no_conversion(*a, **k):
        raise AssertionError("converted again although the cache holds this checkpoint")
    monkeypatch.setattr(ov, "convert_model", no_conversion)
    again = load(run).for_inference("fp32", runtime="openvino").model
    torch.testing.assert_close(again(x), want, atol=1e-4, rtol=0)
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    model, meta = load_weights(RunDir(run).weights())  # other weights: a new entry, never the stale one
    with torch.no_grad():
        model.head.bias.add_(1.0)
    save_weights(tmp_path / "changed.safetensors", model, meta)
    changed = load(tmp_path / "changed.safetensors").for_inference("fp32", runtime="openvino").model
    torch.testing.assert_close(changed(x), want + 1.0, atol=1e-4, rtol=0)
    assert len(list(cache.glob("*.xml"))) == 2

    (cache / entries[1]).write_text("<not an IR")  # a damaged entry is converted again, not an error
    torch.testing.assert_close(load(run).for_inference("fp32", runtime="openvino").model(x), want, atol=1e-4, rtol=0)
    assert (cache / entries[1]).read_text().startswith("<?xml")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))  # a cache that cannot be written
    (tmp_path / "a-file").write_text("")
    before = set(os.listdir(tempfile.gettempdir()))
    torch.testing.assert_close(load(run).for_inference("fp32", runtime="openvino").model(x), want, atol=1e-4, rtol=0)
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("vitkit-openvino.")]

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["eval", "--checkpoint", str(run), "--data", "digits", "--runtime", "openvino"]) == 0
    assert "runtime openvino: asked for" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run), "--data", "digits", "--runtime", "pytorch", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "pytorch"


def test_the_server_runs_a_checkpoint_on_openvino_and_still_explains_it(run, tmp_path):
    from vitkit.analysis.attention import explain_image
    from vitkit.serve.backend import Backend

    b = Backend(run, runtime="openvino", precision="fp32")
    assert b.runtime == "openvino" and b.has_attention and "on openvino" in b.describe()
    b.warm_up(4)  # compiles one image and a full batch now; no request ever waits for a compilation
    assert sorted(b.model._by_shape) == [(1, 1, 8, 8), (4, 1, 8, 8)] and not b.model.static_shapes
    reference = load(run).model
    with torch.inference_mode():
        for n in (3, 3, 4, 3):
            x = torch.randn(n, 1, 8, 8)
            torch.testing.assert_close(b.run(x), reference(x), atol=1e-4, rtol=0)
    assert len(b.model._by_shape) == 2
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (8, 8), 90).save(buf, format="PNG")
    e, png = b.explain(buf.getvalue(), "g.png")
    want = explain_image(reference, b.prepare([b.check_image(buf.getvalue(), "g.png")]))
    assert png.startswith(b"\x89PNG") and torch.allclose(torch.as_tensor(e.rollout), torch.as_tensor(want.rollout))
