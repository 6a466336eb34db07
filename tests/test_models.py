"""The model family: sizes, the paper's structure, attention recording, any-resolution inputs."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import vitkit
from vitkit.models import ViTConfig, VisionTransformer, create_model
from vitkit.models.pos_embed import resample_abs_pos_embed, sincos_2d
from vitkit.models.resnet import same_padding

# Parameter counts of the official code at 224 px and 1000 classes.
OFFICIAL_COUNTS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_small_patch32_224": 22_878_952,
    "vit_base_patch32_224": 88_224_232,
    "vit_base_patch16_224": 86_567_656,
    "vit_base_patch8_224": 86_576_872,
    "vit_large_patch32_224": 306_535_400,
    "vit_large_patch16_224": 304_326_632,
    "vit_huge_patch14_224": 632_045_800,
    "vit_base_r50_s16_224": 98_659_112,
}


def tiny(**kw) -> VisionTransformer:
    base = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4, mlp_dim=64)
    base.update(kw)
    return VisionTransformer(ViTConfig(**base)).eval()


@pytest.mark.parametrize("name,count", OFFICIAL_COUNTS.items())
def test_parameter_counts_equal_official(name, count):
    assert vitkit.count_params(vitkit.model_config(name)) == count


def test_avg_pool_drops_class_token_and_its_position():
    assert vitkit.count_params(vitkit.model_config("vit_base_patch16_224", global_pool="avg")) == 86_566_120


@pytest.mark.parametrize("name", vitkit.list_models())
def test_every_registered_model_runs_at_default_size(name):
    cfg = vitkit.model_config(name)
    small = vitkit.count_params(cfg) < 2_000_000
    with torch.device("cpu" if small else "meta"):
        model = vitkit.build_model(cfg).eval()
        x = torch.randn(2, cfg.in_chans, *cfg.img_size)
        y = model(x)
    assert tuple(y.shape) == (2, cfg.num_classes)
    if small:
        assert torch.isfinite(y).all()


def test_registry_has_every_paper_size_and_patch():
    names = set(vitkit.list_models())
    for size in ("tiny", "small", "base", "large"):
        assert f"vit_{size}_patch16_224" in names
    assert {"vit_base_patch32_384", "vit_huge_patch14_224", "vit_base_patch8_224"} <= names
    assert vitkit.list_models("patch32") == sorted(n for n in names if "patch32" in n)


def test_create_model_accepts_documented_overrides():
    model = vitkit.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=1, num_classes=7, embed_dim=48, depth=3,
        num_heads=3, mlp_dim=96, global_pool="avg", pos_embed="learn2d", representation_size=24, act="gelu_tanh",
        drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.1)
    assert len(model.blocks) == 3 and model.head.out_features == 7 and model.pre_logits.fc.out_features == 24
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("kw,needle", [
    ({"embed_dimm": 3}, "embed_dimm"),
    ({"pos_embed": "learned"}, "pos_embed"),
    ({"global_pool": "max"}, "global_pool"),
    ({"patch_size": 15}, "does not divide"),
    ({"num_heads": 5}, "not divisible by num_heads"),
    ({"drop_rate": 1.5}, "drop_rate"),
])
def test_bad_configuration_is_a_clear_error(kw, needle):
    with pytest.raises(vitkit.VitkitError, match=needle):
        vitkit.create_model("vit_tiny_patch16_224", **kw)


def test_unknown_field_suggests_nearest():
    with pytest.raises(vitkit.VitkitError, match="did you mean 'embed_dim'"):
        vitkit.create_model("vit_tiny_patch16_224", embed_dimm=3)
    with pytest.raises(vitkit.VitkitError, match="vit_base_patch16_224"):
        vitkit.create_model("vit_base_patch16_244")


def test_block_is_pre_norm_residual():
    """z' = MSA(LN(z)) + z; z = MLP(LN(z')) + z' -- checked against the equations written out."""
    model = tiny()
    blk = model.blocks[0]
    z = torch.randn(2, 17, 32)
    grid = (4, 4)
    expected = z + blk.attn(blk.norm1(z), grid)[0]
    expected = expected + blk.mlp(blk.norm2(expected))
    assert torch.allclose(blk(z, grid)[0], expected, atol=1e-6)
    assert blk.norm1.eps == 1e-6 and model.norm.eps == 1e-6


def test_patch_embedding_is_linear_map_of_flattened_patches():
    model = tiny()
    x = torch.randn(1, 3, 16, 16)
    tokens, grid = model.patch_embed(x)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # 1, C, 4, 4, P, P
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, 16, 3 * 16)
    w = model.patch_embed.proj.weight.reshape(32, -1)
    assert grid == (4, 4)
    assert torch.allclose(tokens, patches @ w.T + model.patch_embed.proj.bias, atol=1e-5)


def test_gelu_variants_differ_slightly():
    exact, approx = tiny(act="gelu"), tiny(act="gelu_tanh")
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(2, 3, 16, 16)
    exact.head.weight.data.normal_()
    approx.head.weight.data.copy_(exact.head.weight)
    d = (exact(x) - approx(x)).abs().max().item()
    assert 0 < d < 1e-2


def test_pre_logits_is_dense_tanh_and_head_is_zero_initialised():
    model = tiny(representation_size=8)
    assert isinstance(model.pre_logits.act, torch.nn.Tanh)
    assert model.head.in_features == 8
    assert torch.count_nonzero(model.head.weight) == 0
    feats = model.forward_head(model.forward_features(torch.randn(2, 3, 16, 16)), pre_logits=True)
    assert feats.shape == (2, 8) and feats.abs().max() <= 1
    model.reset_classifier(3)
    assert model.head.in_features == 32 and model.head.out_features == 3 and model.cfg.representation_size is None


def permute_patches(x: torch.Tensor, p: int, perm: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    gh, gw = h // p, w // p
    patches = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, p, p)
    patches = patches[:, perm]
    return patches.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def randomise(model):
    for p in model.parameters():
        if p.dim() > 1 or p.shape[-1] > 1:
            torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize("pos,invariant", [
    ("none", True), ("learn", False), ("learn2d", False), ("sincos", False), ("rel", False),
])
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_only_a_model_without_positions_ignores_patch_order(pos, invariant, pool):
    model = randomise(tiny(pos_embed=pos, global_pool=pool))
    x = torch.randn(2, 3, 16, 16)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        same = torch.allclose(model(x), model(permute_patches(x, 4, perm)), atol=1e-4)
    assert same == invariant


def test_learned_2d_concatenates_row_and_column_embeddings():
    model = randomise(tiny(pos_embed="learn2d"))
    pos = model.position_embedding((4, 4))
    assert pos.shape == (1, 17, 32)
    table = pos[0, 1:].reshape(4, 4, 32)
    assert torch.equal(table[2, 0, :16], table[2, 3, :16])  # same row -> same first half
    assert torch.equal(table[0, 1, 16:], table[3, 1, 16:])  # same column -> same second half
    assert not torch.equal(table[0, 0, :16], table[1, 0, :16])
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("pos_embed")) == 4 * 16 + 4 * 16 + 32


def test_sincos_is_fixed_and_distinguishes_positions():
    model = tiny(pos_embed="sincos")
    assert not any(n.startswith("pos_embed") for n, _ in model.named_parameters())
    table = sincos_2d((4, 4), 32)[0]
    assert table.shape == (16, 32)
    assert torch.cdist(table, table).add(torch.eye(16)).min() > 0.1  # all positions distinct
    assert torch.allclose(model.position_embedding((4, 4))[0, 0], torch.zeros(32))  # class token: none


def test_relative_bias_depends_only_on_offset():
    model = randomise(tiny(pos_embed="rel"))
    bias = model.blocks[0].attn.rel_pos((4, 4))  # heads, 17, 17
    assert bias.shape == (4, 17, 17)
    b = bias[:, 1:, 1:]
    idx = lambda r, c: r * 4 + c  # noqa: E731
    assert torch.equal(b[:, idx(0, 0), idx(1, 2)], b[:, idx(2, 1), idx(3, 3)])  # offset (+1, +2)
    assert not torch.equal(b[:, idx(0, 0), idx(1, 2)], b[:, idx(0, 0), idx(2, 1)])


def test_relative_bias_is_translation_invariant():
    """Patches shifted together keep their mutual biases: the geometry is relative, not absolute."""
    model = randomise(tiny(pos_embed="rel", global_pool="avg"))
    src = [0, 1, 4, 5]  # patch indices of the content in a 4x4 grid
    dst = [5, 6, 9, 10]
    logits1 = model.blocks[0].attn.rel_pos((4, 4))[:, src][:, :, src]
    logits2 = model.blocks[0].attn.rel_pos((4, 4))[:, dst][:, :, dst]
    assert torch.equal(logits1, logits2)


@pytest.mark.parametrize("pos", ["learn", "rel", "none"])
def test_explicit_attention_products_match_the_fused_kernel(pos, monkeypatch):
    """Short sequences use plain matrix products (speed); logits, gradients and recorded attention must
    equal the fused kernel's, in training and in inference."""
    from vitkit.models import vit
    model = randomise(tiny(pos_embed=pos))
    x = torch.randn(3, 3, 16, 16)

    def logits_and_grads():
        model.zero_grad()
        y = model(x)
        y.pow(2).sum().backward()
        return y.detach(), [p.grad.clone() for p in model.parameters()]

    explicit, explicit_grads = logits_and_grads()          # 17 tokens: under both limits
    with torch.no_grad():
        logits, attns = model(x, return_attn=True)
    monkeypatch.setattr(vit, "EXPLICIT_ATTENTION_MAX_TOKENS", 0)
    monkeypatch.setattr(vit, "EXPLICIT_ATTENTION_MAX_TOKENS_TRAIN", 0)
    fused, fused_grads = logits_and_grads()
    with torch.no_grad():
        fused_inference = model(x)
    assert torch.allclose(fused, explicit, atol=1e-5, rtol=1e-5)  # stated tolerance: 1e-5
    assert torch.allclose(fused, logits, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fused_inference, logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(fused_grads, explicit_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert len(attns) == 2 and attns[0].shape == (3, 4, 17, 17)
    assert torch.allclose(attns[0].sum(-1), torch.ones(3, 4, 17), atol=1e-5)


@pytest.mark.parametrize("pos", ["learn", "rel"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_class_token_only_last_block_changes_nothing_but_the_work(pos, qkv_bias):
    """model(x) computes the last block for the class token alone: logits and every gradient must equal
    those read from the full token sequence, in training and in inference."""
    model = randomise(tiny(pos_embed=pos, qkv_bias=qkv_bias))
    x = torch.randn(3, 3, 16, 16)
    assert model.forward_features(x, class_token_only=True).shape == (3, 1, model.embed_dim)

    def logits_and_grads(full: bool):
        model.zero_grad()
        y = model.forward_head(model.forward_features(x)) if full else model(x)
        y.pow(2).sum().backward()
        return y.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    (y_full, g_full), (y_cls, g_cls) = logits_and_grads(True), logits_and_grads(False)
    torch.testing.assert_close(y_cls, y_full, atol=1e-6, rtol=1e-5)
    for k in g_full:
        torch.testing.assert_close(g_cls[k], g_full[k], atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("size", [(16, 16), (24, 24), (32, 16), (8, 20)])
@pytest.mark.parametrize("pos", ["learn", "learn2d", "sincos", "rel", "none"])
def test_any_multiple_of_patch_size_runs_without_changing_parameters(size, pos):
    model = tiny(pos_embed=pos)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model(torch.randn(2, 3, *size)).shape == (2, 5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_size_not_multiple_of_patch_is_clear_error():
    with pytest.raises(vitkit.VitkitError, match="not a multiple of the patch size 4"):
        tiny()(torch.randn(1, 3, 18, 16))
    with pytest.raises(vitkit.VitkitError, match=r"shape \(batch, 3, H, W\)"):
        tiny()(torch.randn(1, 1, 16, 16))


def test_official_resampling_equals_scipy_zoom_order1():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    posemb = torch.randn(1, 1 + 7 * 7, 12)
    out = resample_abs_pos_embed(posemb, (12, 12), (7, 7), 1, mode="official")
    grid = posemb[0, 1:].reshape(7, 7, 12).numpy()
    ref = scipy_ndimage.zoom(grid, (12 / 7, 12 / 7, 1), order=1)
    assert torch.equal(out[:, :1], posemb[:, :1])  # the class-token row is never interpolated
    np.testing.assert_allclose(out[0, 1:].reshape(12, 12, 12).numpy(), ref, atol=1e-5)


def test_resampling_modes_and_antialias():
    posemb = torch.randn(1, 1 + 8 * 8, 6)
    outs = {m: resample_abs_pos_embed(posemb, (4, 6), (8, 8), mode=m) for m in ("official", "bilinear", "bicubic")}
    assert all(o.shape == (1, 25, 6) for o in outs.values())
    assert not torch.allclose(outs["bilinear"], outs["bicubic"])
    aa = resample_abs_pos_embed(posemb, (4, 6), (8, 8), mode="bicubic", antialias=True)
    assert not torch.allclose(aa, outs["bicubic"])
    with pytest.raises(vitkit.VitkitError, match="unknown resample mode"):
        resample_abs_pos_embed(posemb, (4, 4), (8, 8), mode="area")


@pytest.mark.parametrize("pos", ["learn", "learn2d", "rel"])
def test_permanent_resample_matches_on_the_fly(pos):
    model = randomise(tiny(pos_embed=pos))
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        on_the_fly = model(x)
        model.set_img_size((24, 32))
        assert model.cfg.img_size == (24, 32)
        assert torch.allclose(model(x), on_the_fly, atol=1e-5)
    if pos == "learn":
        assert model.pos_embed.shape == (1, 1 + 6 * 8, 32)


def test_hybrid_cuts_feature_map_into_1x1_patches():
    model = vitkit.create_model("vit_mnist_r_28").eval()
    tokens, grid = model.patch_embed(torch.randn(2, 1, 28, 28))
    assert grid == (7, 7) and tokens.shape == (2, 49, 128)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model(torch.randn(1, 1, 56, 40)).shape == (1, 10)  # any size: grid 14x10, positions resampled


def test_same_padding_is_tensorflows():
    assert same_padding(224, 7, 2) == (2, 3)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(28, 3, 1) == (1, 1)
    assert same_padding(5, 1, 2) == (0, 0)


def test_weight_standardised_conv_is_scale_invariant():
    model = vitkit.create_model("resnet_bit_mnist").eval()
    model.head.weight.data.normal_()
    x = torch.randn(2, 1, 28, 28)
    y = model(x)
    with torch.no_grad():
        model.features.stem.conv.weight.mul_(7.0).add_(3.0)
    assert torch.allclose(model(x), y, atol=1e-4)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 256)


@pytest.mark.parametrize("kw", [dict(representation_size=16), dict(pos_embed="rel", global_pool="avg"),
                                dict(pos_embed="learn2d")])
def test_gradients_reach_every_parameter(kw):
    model = tiny(**kw).train()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_same_seed_same_model_and_output():
    def run():
        torch.manual_seed(123)
        m = tiny(drop_rate=0.1, drop_path_rate=0.1).train()
        torch.nn.init.normal_(m.head.weight)
        return m(torch.ones(2, 3, 16, 16))
    assert torch.equal(run(), run())


def test_dropout_and_drop_path_act_only_in_training():
    model = tiny(drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.5)
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    rates = [b.drop_path.p for b in model.blocks]
    assert rates == [0.0, 0.5]  # linear in depth


def test_no_weight_decay_names_tokens_and_positions():
    assert tiny().no_weight_decay() == {"cls_token", "pos_embed"}
    assert "pos_embed_row" in tiny(pos_embed="learn2d").no_weight_decay()


def test_cli_models_lists_counts_and_filters():
    out = subprocess.run([sys.executable, "-m", "vitkit", "models", "--filter", "vit_base_patch16"],
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"^vit_base_patch16_224 +86,567,656 +3x224x224$", out, re.M)
    assert "vit_small" not in out
    helptext = subprocess.run([sys.executable, "-m", "vitkit", "--help"], capture_output=True, text=True).stdout
    assert "models" in helptext


@pytest.mark.parametrize("name,overrides", [("vit_digits_patch4_8", {}),
                                            ("vit_mnist_r_28", {"resnet_layers": (1, 1), "resnet_stem_pool": False}),
                                            ("resnet_bit_mnist", {})])
def test_gradient_checkpointing_gives_the_same_gradients(name, overrides):
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    x = torch.randn(4, model.cfg.in_chans, *model.cfg.img_size)

    def grads():
        model.zero_grad()
        model(x).pow(2).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(model.parameters()))
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5)


def test_stem_without_pool_halves_the_stride():
    pooled = create_model("vit_mnist_r_28")
    unpooled = create_model("vit_mnist_r_28", resnet_layers=(1, 1), resnet_stem_pool=False)
    assert pooled.cfg.backbone_stride == 4 and unpooled.cfg.backbone_stride == 4  # (2,): 4; no pool x 2 stages: 2*2
    assert create_model("vit_mnist_r_28", resnet_stem_pool=False).cfg.grid_size() == (14, 14)
    assert unpooled(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("width", [40, 48, 64])
def test_any_documented_resnet_width_builds(width):
    """Widths are documented as multiples of 8; GroupNorm keeps BiT's 32 groups where 32 divides them."""
    model = create_model("vit_mnist_r_28", resnet_width=width)
    groups = [m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert groups and (width % 32 or set(groups) == {32})  # BiT's layout untouched where it applies
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert create_model("resnet_bit_mnist", width=width)(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.slow
def test_compiled_inference_model_gives_the_same_logits():
    from vitkit.models.inference import inference_model

    model = randomise(tiny())
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        want = model(x)
        got = inference_model(model, compile=True)(x)
    assert torch.allclose(want, got, atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_explicit_attention_limits_apply_on_cpu_only():
    from vitkit.models.vit import EXPLICIT_ATTENTION_MAX_TOKENS, explicit_attention_pays
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with torch.no_grad():
        assert explicit_attention_pays(EXPLICIT_ATTENTION_MAX_TOKENS, cpu)
        assert not explicit_attention_pays(EXPLICIT_ATTENTION_MAX_TOKENS + 1, cpu)
        assert not explicit_attention_pays(17, cuda)      # CUDA always takes the fused (flash) kernel
    assert explicit_attention_pays(64, cpu) and not explicit_attention_pays(65, cpu)  # training limit
