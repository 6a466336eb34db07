"""`vitkit export --format onnx`: onnxruntime gives PyTorch's logits, for any batch size."""

import pytest
import torch

from vitkit.checkpoint import model_meta, save_weights
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
