"""Masked patch prediction: the corruption proportions, the colour targets, the loss, and the
pretrain -> finetune hand-over."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vitkit.cli import main
from vitkit.models import create_model
from vitkit.pretrain import MaskedPatchPrediction, colour_targets, sample_corruption


def test_half_the_patches_are_corrupted_80_10_10():
    c = sample_corruption(4000, 64, torch.Generator().manual_seed(0))
    assert (c.corrupted.sum(1) == 32).all()                      # exactly half of every image
    assert not (c.masked & ~c.corrupted).any() and not (c.replaced & ~c.corrupted).any()
    assert not (c.masked & c.replaced).any()
    total = c.corrupted.sum().item()
    assert c.masked.sum().item() / total == pytest.approx(0.8, abs=0.005)
    assert c.replaced.sum().item() / total == pytest.approx(0.1, abs=0.005)
    kept = c.corrupted & ~c.masked & ~c.replaced
    assert kept.sum().item() / total == pytest.approx(0.1, abs=0.005)


def test_corruption_uses_the_mask_token_another_patch_or_nothing():
    mpp = MaskedPatchPrediction(create_model("vit_digits_patch4_8", img_size=16), [0.5], [0.5])
    b, n, d = 3, 16, mpp.encoder.embed_dim
    z = torch.arange(b * n, dtype=torch.float32).view(b, n, 1).expand(b, n, d).clone()  # each patch its own id
    c = sample_corruption(b, n, torch.Generator().manual_seed(1))
    out = mpp.corrupt(z, c, torch.Generator().manual_seed(2))
    assert torch.equal(out[c.masked], mpp.mask_token.detach().expand(b, n, d)[c.masked])
    assert torch.equal(out[~c.masked & ~c.replaced], z[~c.masked & ~c.replaced])
    ids = out[c.replaced][:, 0]
    assert c.replaced.any() and (ids != z[c.replaced][:, 0]).all()          # another patch, never itself
    assert ((ids >= 0) & (ids < b * n) & (ids == ids.round())).all()       # ... and a real one


def test_colour_targets_are_3_bit_mean_colours():
    img = torch.zeros(1, 3, 4, 4)
    img[:, :, :2, 2:] = 1.0                                      # top-right patch white
    img[0, 0, 2:, :2], img[0, 1, 2:, :2], img[0, 2, 2:, :2] = 0.5, 0.25, 0.99
    img[0, :, 2:, 2:] = torch.tensor([0.0, 1.0, 0.0]).view(3, 1)[:, :, None]
    img[0, 0, 2, 2] = 1.0                                        # mean red of the last patch: 0.25 -> bin 2
    t = colour_targets(img, (2, 2))
    assert t.tolist() == [[0, 511, 4 * 64 + 2 * 8 + 7, 2 * 64 + 7 * 8 + 0]]
    gray = torch.tensor([[0.0, 0.3], [0.7, 1.0]]).view(1, 1, 2, 2)
    assert colour_targets(gray, (2, 2)).tolist() == [[0, 2, 5, 7]]        # 8 classes for grayscale


def test_loss_counts_corrupted_patches_only():
    torch.manual_seed(0)
    mpp = MaskedPatchPrediction(create_model("vit_digits_patch4_8", img_size=16), [0.5], [0.5])
    torch.nn.init.normal_(mpp.mpp_head.weight, std=0.5)
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    logits, targets, c = mpp(x, torch.Generator().manual_seed(3))
    loss, correct, n = mpp(x, torch.Generator().manual_seed(3), loss=True)
    want = torch.nn.functional.cross_entropy(logits[c.corrupted], targets[c.corrupted])
    assert n == 5 * 8 and loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert correct == int((logits[c.corrupted].argmax(-1) == targets[c.corrupted]).sum())
    assert logits.shape == (5, 16, 8)


def test_pretrain_writes_an_encoder_that_finetune_loads(tmp_path, capsys):
    run = tmp_path / "mpp"
    common = ["--data", "synthetic", "--epochs", "1", "--set", "model.img_size=16", "--set", "model.depth=2",
              "--set", "train.tensorboard=false", "--no-progress"]
    assert main(["pretrain", "--out", str(run)] + common) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["objective"] == "mpp" and 0 <= summary["best_val_mpp_acc"] <= 1 and "test_acc" not in summary
    weights = load_file(run / "checkpoints" / "best.safetensors")
    assert not any(k.startswith(("mask_token", "mpp_head", "encoder.")) for k in weights)
    ref = create_model("vit_digits_patch4_8", img_size=16, depth=2, num_classes=0).state_dict()
    assert set(weights) == set(ref)
    ft = tmp_path / "ft"
    assert main(["finetune", "--init", str(run), "--out", str(ft)] + common) == 0
    tuned = json.loads((ft / "summary.json").read_text())
    assert tuned["status"] == "completed" and "test_acc" in tuned
