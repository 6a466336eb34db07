"""`vitkit cost`: the closed-form FLOP count equals PyTorch's own count of the forward pass."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitkit import VitkitError
from vitkit.cli import main
from vitkit.cost import vit_cost
from vitkit.models import create_model


@pytest.mark.parametrize("name,kw,size", [("vit_tiny_patch16_224", {}, 64), ("vit_tiny_patch16_224", {}, 96),
                                          ("vit_small_patch32_224", {"global_pool": "avg"}, 128),
                                          ("vit_digits_patch4_8", {"representation_size": 24, "num_classes": 7}, 16),
                                          ("vit_mnist_r_28", {}, 28), ("vit_mnist_r_28", {}, 30),
                                          ("vit_mnist_r_28", {"resnet_layers": (1, 2), "resnet_stem_pool": False}, 28),
                                          ("vit_base_r50_s16_224", {"depth": 1}, 64)])
def test_flops_match_an_independent_count(name, kw, size):
    model = create_model(name, img_size=size, **kw).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, model.cfg.in_chans, size, size), return_attn=True)  # explicit matmuls
    assert vit_cost(model.cfg).gflops_total * 1e9 == pytest.approx(counter.get_total_flops(), rel=1e-9)


def test_attention_grows_quadratically_and_mlp_linearly():
    cfg = create_model("vit_base_patch16_224").cfg
    a, b = vit_cost(cfg, 224), vit_cost(cfg, 448)  # 4x the patches
    assert b.tokens - 1 == 4 * (a.tokens - 1)
    assert b.gflops_attn_matrix / a.gflops_attn_matrix == pytest.approx(((b.tokens / a.tokens) ** 2), rel=1e-9)
    assert b.gflops_mlp / a.gflops_mlp == pytest.approx(b.tokens / a.tokens, rel=1e-9)
    assert 34.9 < a.gflops_total < 35.4  # the 17.6 "GFLOPs" usually quoted for ViT-B/16 are multiply-adds


def test_cost_command_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["cost", "--model", "vit_tiny_patch16_224", "--img-size", "64,128", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 64 | 17 |" in out and "| 128 | 65 |" in out
    assert (tmp_path / "cost.png").stat().st_size > 0 and (tmp_path / "cost.json").exists()
    with pytest.raises(VitkitError, match="feature map, which is not a multiple of patch_size 2"):
        vit_cost(create_model("vit_mnist_r_28", patch_size=2).cfg, 28)


def test_activation_memory_is_measured_per_token():
    from vitkit.cost import measure_activation_mb
    cfg = create_model("vit_digits_patch4_8").cfg.replace(num_classes=10)
    small, large = measure_activation_mb(cfg, 16), measure_activation_mb(cfg, 32)   # 17 and 65 tokens
    t_small, t_large = 17, 65
    floor = cfg.depth * 2 * t_small * cfg.embed_dim * 4 / 2 ** 20   # at least both LayerNorm inputs per layer
    assert small > floor
    assert large / small == pytest.approx(t_large / t_small, rel=0.25)
