"""On a CUDA GPU: the same numbers as the CPU, no host synchronisation inside a step, the fused kernel,
bf16 and fp16 training, exact resume, nccl collectives and FSDP, and every inference command.

Skipped where no GPU exists; `scripts/gpu_check.sh` runs it on a GPU machine."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from vitkit.cli import main  # noqa: E402
from vitkit.config import build_config  # noqa: E402
from vitkit.models import create_model  # noqa: E402
from vitkit.train import train  # noqa: E402

VARIANTS = [dict(pos_embed=p) for p in ("learn", "learn2d", "sincos", "rel", "none")] + [
    dict(global_pool="avg", fc_norm=True), dict(resnet_layers=(1, 1), patch_size=1, img_size=32)]
RUN = ["model.name=vit_digits_patch4_8", "data.spec=digits", "train.tensorboard=false", "train.log_every=5"]


@pytest.fixture(autouse=True)
def _exact_matmuls():
    """TF32 off while comparing with the CPU (vitkit turns it on for training unless deterministic)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("overrides", VARIANTS, ids=[str(v) for v in VARIANTS])
def test_cuda_forward_and_backward_equal_the_cpu(overrides):
    torch.manual_seed(0)
    kw = {"img_size": 16, "num_classes": 7, **overrides}
    cpu = create_model("vit_tiny_patch16_224", patch_size=kw.pop("patch_size", 4), depth=2, **kw)
    torch.nn.init.normal_(cpu.head.weight, std=0.02)
    gpu = create_model("vit_tiny_patch16_224", patch_size=cpu.cfg.patch_size, depth=2, **kw).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(3, 3, *cpu.cfg.img_size)
    out_cpu, out_gpu = cpu(x), gpu(x.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-4, rtol=1e-4)
    out_cpu.square().sum().backward()
    out_gpu.square().sum().backward()
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(b.grad.cpu(), a.grad, atol=1e-4, rtol=1e-3, msg=name)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(gpu(x.cuda())).all()


def test_no_host_synchronisation_inside_forward_and_backward():
    model = create_model("vit_small_patch16_224", depth=2, img_size=64, pos_embed="rel").cuda()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    model(x).sum().backward()  # warm-up: caches built, kernels chosen
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("tokens_side", [1, 4, 8, 14])
def test_the_fused_kernel_runs_at_every_token_count(tokens_side, monkeypatch):
    import torch.nn.functional as F

    import vitkit.models.vit as vit
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(vit.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = create_model("vit_tiny_patch16_224", depth=1, img_size=16 * tokens_side).cuda().eval()
    x = torch.randn(2, 3, 16 * tokens_side, 16 * tokens_side, device="cuda")
    with torch.no_grad():
        fused = model(x)
        explicit, _ = model(x, return_attn=True)
    assert calls, "the fused kernel did not run"
    torch.testing.assert_close(fused, explicit, atol=1e-4, rtol=1e-4)


def test_a_digits_epoch_on_cuda_in_bf16_matches_the_cpu(tmp_path):
    cpu = train(build_config(None, RUN + ["train.epochs=3", f"train.out={tmp_path / 'cpu'}"]), progress=False)
    gpu = train(build_config(None, RUN + ["train.epochs=3", "train.device=cuda", "train.precision=bf16",
                                          f"train.out={tmp_path / 'gpu'}"]), progress=False)
    assert abs(gpu["test_acc"] - cpu["test_acc"]) <= 0.01, (gpu["test_acc"], cpu["test_acc"])
    assert gpu["host_reads"] == "deferred to logging steps" and cpu["host_reads"] == "every step"


def test_an_fp16_overflow_is_one_skipped_step(tmp_path, monkeypatch):
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, **kw: real(device, init_scale=2.0 ** 60))
    s = train(build_config(None, RUN + ["train.epochs=1", "train.device=cuda", "train.precision=fp16",
                                        f"train.out={tmp_path / 'fp16'}"]), progress=False)
    assert s["status"] == "completed" and s["overflow_steps_skipped"] >= 1 and s["nonfinite_steps_skipped"] == 0


def test_two_epochs_equal_one_plus_resume_on_cuda(tmp_path):
    from safetensors.torch import load_file
    extra = RUN + ["train.device=cuda", "model.drop_rate=0.1", "model.drop_path_rate=0.1", "train.ema_decay=0.9",
                   "train.deterministic=true"]
    train(build_config(None, extra + ["train.epochs=2", f"train.out={tmp_path / 'full'}"]), progress=False)
    train(build_config(None, extra + ["train.epochs=1", f"train.out={tmp_path / 'part'}"]), progress=False)
    train(resume=tmp_path / "part", epochs=2, progress=False)
    a = load_file(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = load_file(tmp_path / "part" / "checkpoints" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


_NCCL = """
import os, sys, torch
from vitkit.train.distributed import init_distributed, shutdown_distributed
dist, device = init_distributed(torch.device("cuda"))
assert device.type == "cuda" and dist.sum([1.0, 2.5]) == [1.0, 2.5] and dist.all_true(True)
dist.barrier()
shutdown_distributed()
"""


def test_a_one_process_nccl_group_runs_the_collectives_and_fsdp(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "nccl_collectives.py"
    script.write_text(_NCCL)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                        str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "fsdp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                        "-m", "vitkit", "train", "--out", str(out), "--device", "cuda", "--fsdp", "--epochs", "1",
                        *sum((["--set", s] for s in RUN), [])], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                        "-m", "vitkit", "train", "--resume", str(out), "--epochs", "2"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_every_inference_command_runs_on_cuda(tmp_path, capsys):
    run = tmp_path / "run"
    train(build_config(None, RUN + ["train.epochs=1", f"train.out={run}"]), progress=False)
    img = tmp_path / "digit.png"
    from PIL import Image
    Image.new("L", (8, 8), 128).save(img)
    assert main(["eval", "--checkpoint", str(run), "--data", "digits", "--device", "cuda"]) == 0
    assert main(["predict", "--checkpoint", str(run), str(img), "--device", "cuda"]) == 0
    assert main(["explain", "--checkpoint", str(run), str(img), "--out", str(tmp_path / "ex"), "--device", "cuda"]) == 0
    assert main(["analyze", "--checkpoint", str(run), "--data", "digits", "--out", str(tmp_path / "an"),
                 "--num-images", "16", "--device", "cuda"]) == 0
    pytest.importorskip("onnxruntime")
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "m.onnx"), "--data", "digits", "--device", "cuda"]) == 0
