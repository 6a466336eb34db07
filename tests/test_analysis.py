"""Analysis on cases with known answers, and the explain/analyze commands end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit import VitkitError
from vitkit.analysis import (distance_from_attentions, embedding_filters_pca, mean_attention_distance,
                             neighbour_contrast, patch_distances, position_similarity, rollout,
                             rollout_from_attentions)


def identity_attention(layers=3, heads=2, t=17, batch=2):
    return [torch.eye(t).expand(batch, heads, t, t).clone() for _ in range(layers)]


def test_identity_attention_gives_identity_rollout_and_zero_distance():
    attns = identity_attention()
    joint = rollout_from_attentions(attns, num_prefix_tokens=0)  # mean over patch queries of identity
    assert torch.allclose(joint, torch.full((2, 17), 1 / 17))
    cls_row = rollout_from_attentions(attns, num_prefix_tokens=1)
    assert torch.allclose(cls_row, torch.zeros(2, 16))  # the class token attends only to itself
    d = distance_from_attentions(attns, (4, 4), 8.0, num_prefix_tokens=1)
    assert d.shape == (3, 2, 2) and torch.allclose(d, torch.zeros_like(d))


def test_uniform_attention_gives_mean_pairwise_distance_in_closed_form():
    n, cell = 5, 4.0
    t = 1 + n * n
    attns = [torch.full((1, 3, t, t), 1 / t)]
    got = distance_from_attentions(attns, (n, n), cell, num_prefix_tokens=1)
    coords = [(i, j) for i in range(n) for j in range(n)]
    expected = np.mean([cell * np.hypot(a - c, b - d) for a, b in coords for c, d in coords])
    assert torch.allclose(got, torch.full_like(got, expected), atol=1e-4)


def test_rollout_multiplies_through_layers():
    a1 = torch.softmax(torch.randn(1, 2, 5, 5), -1)
    a2 = torch.softmax(torch.randn(1, 2, 5, 5), -1)
    norm = lambda a: (a.mean(1) + torch.eye(5)) / (a.mean(1) + torch.eye(5)).sum(-1, keepdim=True)  # noqa: E731
    expected = (norm(a2) @ norm(a1))[:, 0, 1:]
    assert torch.allclose(rollout_from_attentions([a1, a2], 1), expected, atol=1e-6)


def test_equal_position_embeddings_are_similar_everywhere():
    model = vitkit.create_model("vit_mnist_patch7_28")
    with torch.no_grad():
        model.pos_embed.copy_(torch.randn(1, 1, 128).expand_as(model.pos_embed))
    sim = position_similarity(model)
    assert sim.shape == (4, 4, 4, 4) and torch.allclose(sim, torch.ones_like(sim), atol=1e-5)
    assert neighbour_contrast(sim)["far"] == pytest.approx(1.0, abs=1e-5)


def test_learned_2d_embeddings_show_row_column_structure():
    model = vitkit.create_model("vit_mnist_patch7_28", pos_embed="learn2d")
    c = neighbour_contrast(position_similarity(model))
    assert c["same_row_or_column"] > c["different_row_and_column"] + 0.2  # half the vector is shared


def test_pca_recovers_known_orthogonal_filter_patterns():
    model = vitkit.create_model("vit_mnist_patch4_28")
    p = torch.zeros(3, 16)
    p[0, :8], p[1, ::2], p[2, :4] = 1, 1, 1
    basis = torch.linalg.qr(p.T).Q.T  # 3 orthonormal 4x4 patterns
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(128, 3, generator=g) * torch.tensor([5.0, 2.0, 0.5])
    with torch.no_grad():
        model.patch_embed.proj.weight.copy_((coeffs @ basis).reshape(128, 1, 4, 4))
    comps, var = embedding_filters_pca(model, k=3)
    found = comps.reshape(3, 16)
    overlap = (found @ basis.T).abs()
    assert torch.allclose(overlap.max(dim=1).values, torch.ones(3), atol=0.05)
    assert var.sum() == pytest.approx(1.0, abs=1e-4)


def test_analysis_attention_is_what_the_forward_applies():
    model = vitkit.create_model("vit_mnist_patch7_28").eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        plain = model(x)
        recorded, attns = model(x, return_attn=True)
    assert torch.allclose(plain, recorded, atol=1e-5)
    assert rollout(model, x).shape == (3, 4, 4)


def test_hybrid_distances_use_feature_cell_size_and_any_resolution():
    model = vitkit.create_model("vit_mnist_r_28").eval()
    d28 = mean_attention_distance(model, torch.randn(2, 1, 28, 28))
    d56 = mean_attention_distance(model, torch.randn(2, 1, 56, 56))
    assert d28.shape == (4, 4) and model.cfg.pixels_per_token == 4
    assert (d28 <= 4 * 6 * 2 ** 0.5 + 1e-4).all() and d56.mean() > d28.mean()  # a larger grid, in pixels


def test_cnn_baseline_has_no_attention():
    with pytest.raises(VitkitError, match="no self-attention"):
        rollout(vitkit.create_model("resnet_bit_mnist"), torch.randn(1, 1, 28, 28))


def test_patch_distances_are_pixel_distances():
    d = patch_distances((2, 3), 16.0)
    assert d[0, 5].item() == pytest.approx(16 * np.hypot(1, 2))


@pytest.fixture(scope="module")
def mnist_like_run(tmp_path_factory):
    from vitkit.config import build_config
    from vitkit.train import train
    from helpers import make_mnist_dir
    root = tmp_path_factory.mktemp("a")
    data = make_mnist_dir(root / "mnist", 200, 60)
    out = root / "run"
    train(build_config("mnist", [f"data.spec=mnist:{data}", f"train.out={out}", "train.epochs=1",
                                 "train.tensorboard=false", "train.batch_size=32"]), progress=False)
    return out, data


def test_explain_writes_overlay_at_original_size_and_reports_bad_files(mnist_like_run, tmp_path):
    run, _ = mnist_like_run
    Image.new("RGB", (90, 60), (200, 10, 10)).save(tmp_path / "big é.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    r = subprocess.run([sys.executable, "-m", "vitkit", "explain", "--checkpoint", str(run), str(tmp_path / "big é.png"),
                        str(tmp_path / "bad.png"), "--out", str(tmp_path / "ex")], capture_output=True, text=True)
    assert r.returncode == 1 and "bad.png" in r.stderr and "Traceback" not in r.stderr
    res = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert Image.open(res[0]["rollout_png"]).size == (90, 60)
    raw = np.load(res[0]["rollout_npy"])
    assert raw.shape == (4, 4) and raw.max() == pytest.approx(1.0)
    assert len(res[0]["top"]) == 5 and "error" in res[1]


def test_analyze_writes_figure7_and_report(mnist_like_run, tmp_path):
    run, data = mnist_like_run
    r = subprocess.run([sys.executable, "-m", "vitkit", "analyze", "--checkpoint", str(run), "--data", f"mnist:{data}",
                        "--out", str(tmp_path / "an"), "--num-images", "20"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "an"
    result = json.loads((out / "analysis.json").read_text())
    assert np.array(result["mean_attention_distance"]).shape == (6, 4) and result["images"] == 20
    assert set(result["position_similarity"]) >= {"neighbours", "far"}
    for png in ("attention_distance.png", "position_similarity.png", "filters_pca.png"):
        assert (out / png).stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "mean attention distance" in page.lower()
