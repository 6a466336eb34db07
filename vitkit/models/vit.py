"""The Vision Transformer, written to be read beside the paper (Dosovitskiy et al., 2021, eqs. 1-4).

    z_0   = [x_class; x_p^1 E; ...; x_p^N E] + E_pos             (1)  PatchEmbed, cls_token, pos_embed
    z'_l  = MSA(LN(z_{l-1})) + z_{l-1}                          (2)  Block
    z_l   = MLP(LN(z'_l)) + z'_l                                (3)  Block
    y     = LN(z_L^0)                                           (4)  norm, then pool and head
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import VitkitError
from .config import ViTConfig
from .pos_embed import RelativePositionBias, cached, learned_2d, resample_1d, resample_abs_pos_embed, sincos_2d
from .resnet import ResNetFeatures, zero_head


class PatchEmbed(nn.Module):
    """x_p E: a PxP convolution with stride P is the linear map of each flattened PxP patch.

    For the hybrid, the patches are taken from a ResNet feature map instead of the image.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.backbone = None
        in_chans = cfg.in_chans
        if cfg.resnet_layers is not None:
            self.backbone = ResNetFeatures(cfg.resnet_layers, cfg.in_chans, cfg.resnet_width, cfg.resnet_stem_pool)
            in_chans = self.backbone.num_features
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Image (B, C, H, W) -> patch tokens (B, N, D) and the patch grid (H/P, W/P)."""
        if self.backbone is not None:
            x = self.backbone(x)
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            where = "feature map" if self.backbone is not None else "image"
            raise VitkitError(f"{where} size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the patch size {p}")
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])


# On CPU, up to this many tokens softmax(q k^T) v is computed with plain matrix products: there the
# fused kernel's per-call cost dominates short sequences. Inference: the fused kernel is 1.2-1.7x
# slower at 17-101 tokens, batch 32 (benchmarks/throughput.py). Training, whose products must also
# keep the T x T probabilities for the backward: whole steps 4-8% faster at 17-50 tokens, even at 65,
# slower beyond (0.91-0.99x at 197; benchmarks/variants.py --study attention), so the fused kernel
# takes over earlier. Measured on CPUs only: on CUDA (and any other device) the fused kernel always runs.
EXPLICIT_ATTENTION_MAX_TOKENS = 128
EXPLICIT_ATTENTION_MAX_TOKENS_TRAIN = 64


def explicit_attention_pays(tokens: int, device: torch.device) -> bool:
    """Whether plain products beat the fused kernel for this sequence length here (see the limits above)."""
    if device.type != "cpu":
        return False
    limit = EXPLICIT_ATTENTION_MAX_TOKENS_TRAIN if torch.is_grad_enabled() else EXPLICIT_ATTENTION_MAX_TOKENS
    return tokens <= limit


class Attention(nn.Module):
    """MSA: softmax(q k^T / sqrt(D_h)) v for each head, heads concatenated and projected (appendix A)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.embed_dim // cfg.num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.attn_drop = nn.Dropout(cfg.attn_drop_rate)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)
        self.rel_pos = None
        if cfg.pos_embed == "rel":
            self.rel_pos = RelativePositionBias(cfg.num_heads, cfg.grid_size(), cfg.num_prefix_tokens,
                                                cfg.resample, cfg.resample_antialias)

    def forward(self, x: Tensor, grid: tuple[int, int], return_attn: bool = False,
                queries: int | None = None) -> tuple[Tensor, Tensor | None]:
        """`queries=n` computes the output for the first n tokens only (all tokens still serve as keys and
        values): what the last block needs when only the class token reaches the head."""
        b, t, d = x.shape
        if queries is None:
            q, k, v = self.heads(self.qkv(x), 3)                     # each (B, heads, T, D_h)
        else:
            q, k, v = self.first_queries(x, queries)                 # q (B, heads, n, D_h)
        bias = self.rel_pos(grid).to(q.dtype)[:, :q.shape[2]] if self.rel_pos is not None else None
        out, probs = self.attend(q, k, v, bias, return_attn)       # (B, heads, n, D_h)
        out = out.transpose(1, 2).reshape(b, q.shape[2], d)           # heads concatenated
        return self.proj_drop(self.proj(out)), probs

    def heads(self, y: Tensor, parts: int) -> tuple[Tensor, ...]:
        """(B, T, parts*D) projections -> `parts` tensors of shape (B, heads, T, D_h)."""
        b, t, _ = y.shape
        return y.view(b, t, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def first_queries(self, x: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """q for the first n tokens, k and v for all: W_q applied to n rows only."""
        if not isinstance(self.qkv, nn.Linear):  # a quantised layer has no weight rows to slice
            q, k, v = self.heads(self.qkv(x), 3)
            return q[:, :, :n], k, v
        w, wb = self.qkv.weight, self.qkv.bias  # rows: W_q, W_k, W_v
        e = self.qkv.in_features  # = D, but a constant when traced: exported files keep the slices folded
        (q,) = self.heads(F.linear(x[:, :n], w[:e], None if wb is None else wb[:e]), 1)
        k, v = self.heads(F.linear(x, w[e:], None if wb is None else wb[e:]), 2)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None,
               return_attn: bool) -> tuple[Tensor, Tensor | None]:
        """softmax(q k^T / sqrt(D_h) + bias) v: plain products when the probabilities are asked for or
        they are faster here (`explicit_attention_pays`), else PyTorch's fused kernel."""
        if not (return_attn or explicit_attention_pays(k.shape[2], q.device)):
            dropout = self.attn_drop.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout), None
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(dim=-1)
        return self.attn_drop(probs) @ v, probs


class Mlp(nn.Module):
    """Two dense layers with a GELU between them; dropout after each dense layer as in appendix B.1."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        self.act = nn.GELU(approximate="tanh" if cfg.act == "gelu_tanh" else "none")
        self.drop1 = nn.Dropout(cfg.drop_rate)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)
        self.drop2 = nn.Dropout(cfg.drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p, rescale the rest."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    """One pre-LayerNorm encoder layer: equations (2) and (3)."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, z: Tensor, grid: tuple[int, int], return_attn: bool = False,
                queries: int | None = None) -> tuple[Tensor, Tensor | None]:
        """`queries=n`: the output for the first n tokens only (see Attention.forward)."""
        a, probs = self.attn(self.norm1(z), grid, return_attn, queries)
        if queries is not None:
            z = z[:, :queries]
        z = z + self.drop_path(a)                          # (2)
        z = z + self.drop_path(self.mlp(self.norm2(z)))    # (3)
        return z, probs


class VisionTransformer(nn.Module):
    """ViT (and the hybrid) from a ViTConfig. Parameter names are timm's.

    `model(x, return_attn=True)` returns `(logits, attentions)`, with one (B, heads, T, T) tensor of
    softmax probabilities per layer, for that call only; otherwise the fused attention kernel runs.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.embed_dim = self.num_features = cfg.embed_dim
        grid, d = cfg.grid_size(), cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.global_pool == "token" else None
        if cfg.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + grid[0] * grid[1], d))
        elif cfg.pos_embed == "learn2d":
            self.pos_embed_row = nn.Parameter(torch.zeros(1, grid[0], d // 2))
            self.pos_embed_col = nn.Parameter(torch.zeros(1, grid[1], d // 2))
            self.pos_embed_cls = nn.Parameter(torch.zeros(1, 1, d)) if self.cls_token is not None else None
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([Block(cfg, r) for r in rates])
        # Eq. 4 normalises the encoder output; timm's average-pool variant normalises after pooling instead.
        self.norm = nn.Identity() if cfg.fc_norm else nn.LayerNorm(d, eps=cfg.norm_eps)
        self.fc_norm = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.fc_norm else nn.Identity()
        self.pre_logits = nn.Identity()
        if cfg.representation_size:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(d, cfg.representation_size))
            self.pre_logits.add_module("act", nn.Tanh())
            self.num_features = cfg.representation_size
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.grad_checkpointing = False
        self._tables: dict = {}  # fixed position tables per (grid, device, dtype)
        self.init_weights()

    # --- initialisation, as in the official code -------------------------------------------------
    def init_weights(self) -> None:
        if self.patch_embed.proj.weight.is_meta:
            return
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                _init_linear(name, m)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=(w[0].numel()) ** -0.5)  # lecun normal
        nn.init.zeros_(self.patch_embed.proj.bias)
        for p in (getattr(self, n, None) for n in ("pos_embed", "pos_embed_row", "pos_embed_col", "pos_embed_cls")):
            if p is not None:
                nn.init.normal_(p, std=0.02)

    # --- forward -----------------------------------------------------------------------------------
    def position_embedding(self, grid: tuple[int, int]) -> Tensor | None:
        """E_pos for a patch grid, resampled in 2D on the fly when the grid differs from training."""
        cfg = self.cfg
        if cfg.pos_embed == "learn":
            return resample_abs_pos_embed(self.pos_embed, grid, cfg.grid_size(), self.num_prefix_tokens,
                                          cfg.resample, cfg.resample_antialias)
        if cfg.pos_embed == "learn2d":
            row = resample_1d(self.pos_embed_row, grid[0], cfg.resample, cfg.resample_antialias)
            col = resample_1d(self.pos_embed_col, grid[1], cfg.resample, cfg.resample_antialias)
            table = learned_2d(row, col)
            return table if self.pos_embed_cls is None else torch.cat([self.pos_embed_cls, table], dim=1)
        if cfg.pos_embed == "sincos":
            w = self.patch_embed.proj.weight
            table = cached(self._tables, (tuple(grid), w.device, w.dtype), lambda: sincos_2d(grid, self.embed_dim).to(w))
            return F.pad(table, (0, 0, self.num_prefix_tokens, 0))  # the class token gets no position
        return None  # "rel" acts inside attention; "none" has no position information

    def forward_features(self, x: Tensor, return_attn: bool = False,
                         patch_hook: Callable[[Tensor, tuple[int, int]], Tensor] | None = None,
                         class_token_only: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Image -> LN(z_L): (B, T, D) tokens after the final LayerNorm. `patch_hook` may replace the patch
        embeddings x_p E before the class token and E_pos join them (masked patch prediction corrupts there).

        `class_token_only` returns LN(z_L^0) alone, (B, 1, D): the last block then computes its query,
        attention output and MLP for the class token only, the one row eq. 4 reads - the same result with
        ~10/12 of that block's matrix products skipped."""
        self._check_input(x)
        z, grid = self.patch_embed(x)                                               # x_p E: (B, N, D)
        if patch_hook is not None:
            z = patch_hook(z, grid)
        if self.cls_token is not None:
            z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], dim=1)   # (1) [x_class; x_p E]
        pos = self.position_embedding(grid)
        if pos is not None:
            z = z + pos                                                             # (1) ... + E_pos
        z = self.pos_drop(z)
        attns = []
        last = len(self.blocks) - 1
        last_queries = 1 if class_token_only and self.cls_token is not None and not return_attn else None
        for i, blk in enumerate(self.blocks):
            queries = last_queries if i == last else None
            if self.grad_checkpointing and self.training and torch.is_grad_enabled() and not return_attn:
                z, _ = checkpoint(blk, z, grid, False, queries, use_reentrant=False)
            else:
                z, probs = blk(z, grid, return_attn, queries)
                attns.append(probs)
        z = self.norm(z)                                                            # (4) LN(z_L)
        return (z, attns) if return_attn else z

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: memory ~ one block, ~1.3x the compute."""
        self.grad_checkpointing = enable
        if self.patch_embed.backbone is not None:
            self.patch_embed.backbone.grad_checkpointing = enable

    def forward_head(self, z: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool (class token, or mean of the patch tokens), optional tanh representation layer, head."""
        y = z[:, 0] if self.cfg.global_pool == "token" else z[:, self.num_prefix_tokens:].mean(dim=1)  # (4) z_L^0
        y = self.pre_logits(self.fc_norm(y))
        return y if pre_logits else self.head(y)

    def forward(self, x: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        if return_attn:
            z, attns = self.forward_features(x, return_attn=True)
            return self.forward_head(z), attns
        return self.forward_head(self.forward_features(x, class_token_only=self.cfg.global_pool == "token"))

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise VitkitError(f"expected images of shape (batch, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}")

    # --- conveniences the trainer and converters rely on --------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters the paper's optimiser leaves undecayed: tokens and position tables (plus biases/norms,
        which the optimiser recognises by shape)."""
        names = {"cls_token", "pos_embed", "pos_embed_row", "pos_embed_col", "pos_embed_cls"}
        return {n for n, _ in self.named_parameters() if n in names or n.endswith("rel_pos.table")
                or n.endswith("rel_pos.prefix")}

    def reset_classifier(self, num_classes: int, drop_pre_logits: bool = True) -> None:
        """New zero-initialised head (paper B.1.1); by default the pre-logits layer goes too."""
        if drop_pre_logits and self.cfg.representation_size:
            self.pre_logits = nn.Identity()
            self.num_features = self.embed_dim
            self.cfg = self.cfg.replace(representation_size=None)
        self.cfg = self.cfg.replace(num_classes=num_classes)
        self.num_classes = num_classes
        self.head = zero_head(self.num_features, num_classes).to(self.patch_embed.proj.weight)

    def set_img_size(self, img_size: int | tuple[int, int], mode: str | None = None, antialias: bool | None = None) -> None:
        """Resample the position information permanently for a new input size (fine-tuning at higher
        resolution, paper section 3.2). The class-token row is never interpolated."""
        cfg = self.cfg.replace(img_size=img_size,
                               resample=mode or self.cfg.resample,
                               resample_antialias=self.cfg.resample_antialias if antialias is None else antialias)
        grid, mode, aa = cfg.grid_size(), cfg.resample, cfg.resample_antialias
        with torch.no_grad():
            if cfg.pos_embed == "learn":
                self.pos_embed = nn.Parameter(resample_abs_pos_embed(
                    self.pos_embed, grid, self.cfg.grid_size(), self.num_prefix_tokens, mode, aa))
            elif cfg.pos_embed == "learn2d":
                self.pos_embed_row = nn.Parameter(resample_1d(self.pos_embed_row, grid[0], mode, aa))
                self.pos_embed_col = nn.Parameter(resample_1d(self.pos_embed_col, grid[1], mode, aa))
            elif cfg.pos_embed == "rel":
                for blk in self.blocks:
                    rp = blk.attn.rel_pos
                    rp.mode, rp.antialias = mode, aa
                    rp.table = nn.Parameter(rp.table_for(grid))
                    rp.grid = grid
        self.cfg = cfg


def _init_linear(name: str, m: nn.Linear) -> None:
    """Xavier-uniform kernels (q, k and v each as its own DxD matrix); MLP biases N(0, 1e-6); head zero."""
    if name == "head":
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)
        return
    if name.endswith("attn.qkv"):
        for w in m.weight.chunk(3, dim=0):
            nn.init.xavier_uniform_(w)
    elif name.startswith("pre_logits"):
        nn.init.trunc_normal_(m.weight, std=m.in_features ** -0.5)
    else:
        nn.init.xavier_uniform_(m.weight)
    if m.bias is not None:
        if ".mlp." in name:
            nn.init.normal_(m.bias, std=1e-6)
        else:
            nn.init.zeros_(m.bias)

