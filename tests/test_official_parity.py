"""vitkit reproduces the official JAX/Flax ViT (plain and hybrid) on checkpoints in the official layout.

The reference below is a small Flax model written for this test with the official code's module
structure and names (so its parameters flatten to the official .npz keys) and Flax's own layers:
per-head attention kernels, tanh-approximate GELU, GroupNorm(32), "SAME" padding.
"""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("JAX_PLATFORMS", "cpu")
jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402
from scipy import ndimage  # noqa: E402

from vitkit.interop import load_model  # noqa: E402


class StandardisedConv(nn.Conv):
    def param(self, name, init_fn, *args):
        value = super().param(name, init_fn, *args)
        if name != "kernel":
            return value
        centred = value - value.mean(axis=(0, 1, 2))
        return centred / (value.std(axis=(0, 1, 2)) + 1e-5)


class Bottleneck(nn.Module):
    width: int
    stride: int

    @nn.compact
    def __call__(self, x):
        s = (self.stride, self.stride)
        out = 4 * self.width
        skip = x
        if x.shape[-1] != out or self.stride != 1:
            skip = nn.GroupNorm(name="gn_proj")(StandardisedConv(out, (1, 1), s, use_bias=False, name="conv_proj")(x))
        y = nn.relu(nn.GroupNorm(name="gn1")(StandardisedConv(self.width, (1, 1), use_bias=False, name="conv1")(x)))
        y = nn.relu(nn.GroupNorm(name="gn2")(StandardisedConv(self.width, (3, 3), s, use_bias=False, name="conv2")(y)))
        y = nn.GroupNorm(name="gn3")(StandardisedConv(out, (1, 1), use_bias=False, name="conv3")(y))
        return nn.relu(skip + y)


class Stage(nn.Module):
    width: int
    units: int
    stride: int

    @nn.compact
    def __call__(self, x):
        for u in range(self.units):
            x = Bottleneck(self.width, self.stride if u == 0 else 1, name=f"unit{u + 1}")(x)
        return x


class Mlp(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(x.shape[-1], name="Dense_1")(nn.gelu(nn.Dense(self.hidden, name="Dense_0")(x)))


class Layer(nn.Module):
    hidden: int
    heads: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(name="LayerNorm_0")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="MultiHeadDotProductAttention_1")(y, y)
        return x + Mlp(self.hidden, name="MlpBlock_3")(nn.LayerNorm(name="LayerNorm_2")(x))


class PosEmbed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + self.param("pos_embedding", nn.initializers.normal(0.02), (1,) + x.shape[1:])


class Encoder(nn.Module):
    depth: int
    hidden: int
    heads: int

    @nn.compact
    def __call__(self, x):
        x = PosEmbed(name="posembed_input")(x)
        for i in range(self.depth):
            x = Layer(self.hidden, self.heads, name=f"encoderblock_{i}")(x)
        return nn.LayerNorm(name="encoder_norm")(x)


class FlaxViT(nn.Module):
    width: int = 48
    depth: int = 2
    heads: int = 3
    hidden: int = 96
    patch: int = 8
    classes: int = 7
    representation: int = 0
    resnet: tuple = ()
    resnet_width: int = 32

    @nn.compact
    def __call__(self, x):
        if self.resnet:
            x = StandardisedConv(self.resnet_width, (7, 7), (2, 2), use_bias=False, name="conv_root")(x)
            x = nn.relu(nn.GroupNorm(name="gn_root")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            for s, units in enumerate(self.resnet):
                x = Stage(self.resnet_width * 2 ** s, units, 2 if s else 1, name=f"block{s + 1}")(x)
        x = nn.Conv(self.width, (self.patch, self.patch), (self.patch, self.patch), padding="VALID", name="embedding")(x)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)), x], axis=1)
        x = Encoder(self.depth, self.hidden, self.heads, name="Transformer")(x)[:, 0]
        if self.representation:
            x = jnp.tanh(nn.Dense(self.representation, name="pre_logits")(x))
        return nn.Dense(self.classes, name="head")(x)


def official_npz(tmp_path, model: FlaxViT, size: int, channels: int = 3):
    """Random Flax parameters (norm scales and biases perturbed too), saved in the official layout."""
    x = jnp.zeros((1, size, size, channels))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    flat = traverse_util.flatten_dict(params, sep="/")
    rng = np.random.default_rng(0)
    flat = {k: np.asarray(v) + rng.normal(0, 0.05, np.shape(v)).astype(np.float32) for k, v in flat.items()}
    path = tmp_path / "official.npz"
    np.savez(path, **flat)
    return path, traverse_util.unflatten_dict(flat, sep="/")


def flax_logits(model, params, images):
    return np.asarray(model.apply({"params": params}, jnp.asarray(images.permute(0, 2, 3, 1).numpy())))


@pytest.mark.parametrize("kind", ["plain", "representation", "hybrid"])
def test_official_layout_reproduces_flax_logits(tmp_path, kind):
    kw = {"plain": {}, "representation": {"representation": 24}, "hybrid": {"resnet": (1, 2), "patch": 1}}[kind]
    size = 64 if kind == "hybrid" else 32
    ref = FlaxViT(**kw)
    path, params = official_npz(tmp_path, ref, size)
    ours = load_model(path).eval()  # defaults for .npz: act gelu_tanh, resample official
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        got = ours(images).numpy()
    assert np.abs(got - flax_logits(ref, params, images)).max() <= 1e-4


def official_resize(posemb: np.ndarray, new_grid: int) -> np.ndarray:
    """What the official fine-tuning code does: keep the class token, zoom the grid with order=1."""
    tok, grid = posemb[:, :1], posemb[0, 1:]
    old = int(np.sqrt(len(grid)))
    grid = ndimage.zoom(grid.reshape(old, old, -1), (new_grid / old, new_grid / old, 1), order=1)
    return np.concatenate([tok, grid.reshape(1, new_grid * new_grid, -1)], axis=1)


@pytest.mark.parametrize("kind", ["plain", "hybrid"])
def test_resized_position_embeddings_match_official_fine_tuning(tmp_path, kind):
    kw = {"plain": {}, "hybrid": {"resnet": (1, 2), "patch": 1}}[kind]
    size, new_size = (32, 56) if kind == "plain" else (64, 112)
    ref = FlaxViT(**kw)
    path, params = official_npz(tmp_path, ref, size)
    pe = params["Transformer"]["posembed_input"]["pos_embedding"]
    new_grid = new_size // 8  # patch 8 on the image, or 1x1 patches of the stride-8 feature map
    params["Transformer"]["posembed_input"]["pos_embedding"] = official_resize(pe, new_grid)
    ours = load_model(path, img_size=new_size).eval()
    images = torch.randn(2, 3, new_size, new_size)
    with torch.no_grad():
        got = ours(images).numpy()
    assert np.abs(got - flax_logits(ref, params, images)).max() <= 1e-4
