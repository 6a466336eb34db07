"""Weights in and out: parity with Hugging Face transformers, exact round trips, inference of the
architecture from tensors, Hub-name resolution, and refusal of files that would run code."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit import VitkitError
from vitkit.interop import load_model, save_model

transformers = pytest.importorskip("transformers")


def randomised(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def hf_model(**kw):
    cfg = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=32,
               patch_size=8, num_channels=3, num_labels=5, layer_norm_eps=1e-6, attn_implementation="eager")
    cfg.update(kw)
    return randomised(transformers.ViTForImageClassification(transformers.ViTConfig(**cfg)))


def tiny(**kw):
    base = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_dim=96, num_classes=5)
    base.update(kw)
    return randomised(vitkit.create_model("vit_tiny_patch16_224", **base))


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_hf_logits_match_at_native_and_larger_size(tmp_path):
    ref = hf_model()
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    assert ours.cfg.num_heads == 3 and ours.cfg.norm_eps == 1e-6 and ours.pretrained_cfg["format"] == "hf"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), ref(pixel_values=x).logits) <= 1e-4
        big = torch.randn(2, 3, 48, 64)  # HF interpolates bicubically; vitkit resamples on the fly
        assert max_diff(ours(big), ref(pixel_values=big, interpolate_pos_encoding=True).logits) <= 1e-4
        resized = load_model(tmp_path / "hf", img_size=(48, 64)).eval()
        assert max_diff(resized(big), ref(pixel_values=big, interpolate_pos_encoding=True).logits) <= 1e-4


def test_hf_v4_key_names_load(tmp_path):
    """Files on the Hub use the v4 names (encoder.layer.N.attention.attention.query ...)."""
    ref = hf_model()
    v4 = {}
    for k, v in ref.state_dict().items():
        k = k.replace("vit.layers.", "vit.encoder.layer.")
        for new, old in (("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                         ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
                         ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
            k = k.replace(new, old)
        v4[k] = v.contiguous()
    save_file(v4, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(ref.config.to_dict()))
    ours = load_model(tmp_path / "model.safetensors").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), ref(pixel_values=x).logits) <= 1e-4


def test_hf_export_loads_in_transformers_with_same_logits(tmp_path):
    model = tiny(act="gelu_tanh")
    save_model(model, tmp_path / "out", "hf", {"classes": list("abcde")})
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["id2label"]["2"] == "c"
    ref = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ref(pixel_values=x).logits, model(x)) <= 1e-4


@pytest.mark.parametrize("to,name", [("timm", "w.safetensors"), ("timm", "w.pth"), ("hf", "hfdir"), ("vitkit", "v.safetensors")])
def test_round_trips_are_exact(tmp_path, to, name):
    model = tiny(embed_dim=192)  # a standard width: a .pth state dict cannot tell its number of heads
    save_model(model, tmp_path / name, to)
    back = load_model(tmp_path / name).eval()
    assert back.cfg.to_dict() == model.cfg.to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


@pytest.mark.parametrize("kw", [dict(), dict(global_pool="avg"), dict(representation_size=24),
                                dict(resnet_layers=(1, 1), resnet_width=32, patch_size=1, img_size=64)])
def test_npz_round_trip_gives_identical_logits(tmp_path, kw):
    model = tiny(act="gelu_tanh", resample="official", **kw)
    save_model(model, tmp_path / "m.npz", "npz")
    with np.load(tmp_path / "m.npz") as f:
        keys = set(f.files)
    assert "Transformer/encoder_norm/scale" in keys and "embedding/kernel" in keys
    back = load_model(tmp_path / "m.npz").eval()
    assert back.cfg.act == "gelu_tanh" and back.cfg.resample == "official"  # the source's defaults
    x = torch.randn(2, 3, *model.cfg.img_size)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_architecture_inferred_from_tensors(tmp_path):
    # heads are not visible in fused tensors: known for the paper's widths, given for others
    for name, known in (("vit_small_patch32_224", {}), ("vit_base_patch16_224", {}),
                        ("vit_large_r50_s32_224", {}), ("vit_mnist_r_28", {"num_heads": 4})):
        cfg = vitkit.model_config(name)
        with torch.device("meta"):
            model = vitkit.build_model(cfg)
        sd = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
        from vitkit.interop.infer import infer_config
        inferred = infer_config(sd, **known)
        for field in ("embed_dim", "depth", "num_heads", "mlp_dim", "patch_size", "img_size", "in_chans",
                      "num_classes", "global_pool", "resnet_layers", "resnet_width"):
            assert getattr(inferred, field) == getattr(cfg, field), (name, field)


def test_overrides_new_head_and_resolution(tmp_path):
    model = tiny(representation_size=24)
    save_model(model, tmp_path / "w.safetensors", "timm")
    ft = load_model(tmp_path / "w.safetensors", num_classes=7, img_size=48)
    assert ft.head.out_features == 7 and torch.count_nonzero(ft.head.weight) == 0
    assert isinstance(ft.pre_logits, torch.nn.Identity)  # paper B.1.1: the whole old head goes
    assert ft.pos_embed.shape == (1, 1 + 6 * 6, 48) and ft.cfg.resample == "bicubic"
    assert torch.equal(ft.pos_embed[:, :1], model.pos_embed[:, :1])  # class-token row untouched


def test_hub_names_resolve_from_local_cache_layout_and_fail_clearly_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--someorg--tiny-vit" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (cache / "models--someorg--tiny-vit" / "refs").mkdir()
    (cache / "models--someorg--tiny-vit" / "refs" / "main").write_text("abc123")
    hf_model().save_pretrained(snap)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    model = load_model("hf-hub:someorg/tiny-vit")
    assert model.cfg.embed_dim == 48
    with pytest.raises(VitkitError, match="cannot fetch 'google/vit-base-patch16-224'.*offline"):
        load_model("google/vit-base-patch16-224")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch notes the crafted file's protocol
def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"patch_embed.proj.weight": Payload()}, f)
    with pytest.raises(VitkitError, match="never runs code"):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zipfile
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as z:
        z.write(tmp_path / "obj.npy", "embedding/kernel.npy")
    with pytest.raises(VitkitError, match="needs pickle"):
        load_model(tmp_path / "evil.npz")


def test_mismatched_keys_are_named(tmp_path):
    model = tiny(embed_dim=192)
    sd = dict(model.state_dict())
    sd["reg_token"] = torch.zeros(1, 4, 192)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    with pytest.raises(VitkitError, match="unexpected keys reg_token"):
        load_model(tmp_path / "w.safetensors")
    with pytest.raises(VitkitError, match="nothing.npz do not exist"):
        load_model(tmp_path / "nothing.npz")


def test_convert_command(tmp_path):
    save_model(tiny(), tmp_path / "w.safetensors", "timm")
    r = subprocess.run([sys.executable, "-m", "vitkit", "convert", str(tmp_path / "w.safetensors"),
                        str(tmp_path / "w.npz"), "--to", "npz"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_model(tmp_path / "w.npz").cfg.depth == 2


def test_big_vision_layout_loads(tmp_path):
    """big_vision names: params/ prefix, top-level pos_embedding, *_0 module numbering, scanned blocks."""
    model = tiny(act="gelu_tanh", resample="official")
    save_model(model, tmp_path / "m.npz", "npz")
    with np.load(tmp_path / "m.npz") as f:
        arrays = {k: f[k] for k in f.files}
    bv = {}
    for k, v in arrays.items():
        k = (k.replace("Transformer/posembed_input/pos_embedding", "pos_embedding")
             .replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
             .replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0"))
        bv["params/img/" + k] = v
    stacked = {}
    for k in [k for k in bv if "encoderblock_0/" in k]:  # scan the blocks: one stacked array each
        stacked[k.replace("encoderblock_0/", "encoderblock/")] = np.stack([bv.pop(k), bv.pop(k.replace("encoderblock_0/", "encoderblock_1/"))])
    np.savez(tmp_path / "bv.npz", **bv, **stacked)
    back = load_model(tmp_path / "bv.npz").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_predict_and_eval_accept_any_weights_format(tmp_path):
    from vitkit.predict import predict
    model = tiny(embed_dim=192)
    save_model(model, tmp_path / "w.npz", "npz")
    from PIL import Image
    Image.new("RGB", (50, 40), (10, 200, 30)).save(tmp_path / "a.png")
    res = predict(tmp_path / "w.npz", [tmp_path / "a.png"], top_k=2)
    assert res[0].error is None and len(res[0].top) == 2
