"""What a GPU run relies on, checked on any machine: device validation, the collectives' device, fp16
loss scaling through an overflow, the random state a resume restores, the FSDP mesh, cached position
tables, determinism and TF32, and tensors that follow the device of their inputs."""

import pytest
import torch

from vitkit import VitkitError, devices
from vitkit.config import build_config
from vitkit.data.transforms import one_hot
from vitkit.models import create_model
from vitkit.train import train
from vitkit.train.distributed import collective_device, init_distributed

TINY = ["model.name=vit_digits_patch4_8", "model.embed_dim=32", "model.mlp_dim=64", "model.depth=2",
        "data.spec=synthetic", "model.img_size=16", "train.batch_size=64", "train.tensorboard=false"]


@pytest.fixture
def restore_globals():
    state = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.use_deterministic_algorithms(state[0], warn_only=state[1])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = state[2], state[3]


@pytest.mark.parametrize("name, needle", [("gpu", "use cuda"), ("tpu", "unknown device .tpu."), ("cuda:x", "unknown device"), ("xpu", "not supported here")])
def test_devices_that_cannot_exist_are_refused(name, needle):
    with pytest.raises(VitkitError, match=needle):
        devices.resolve_device(name)


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(VitkitError, match=r"'cuda:9' does not exist: this machine has 2 GPUs \(cuda:0..cuda:1\)"):
        devices.resolve_device("cuda:9")
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_refused():
    with pytest.raises(VitkitError, match="CUDA is not available"):
        devices.resolve_device("cuda")


def test_local_rank_beyond_the_gpus_is_refused_before_joining_a_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(VitkitError, match="LOCAL_RANK=3 but this machine has 2 GPUs"):
        init_distributed(torch.device("cuda"))


def test_collectives_reduce_tensors_on_the_device_their_backend_serves():
    assert collective_device("nccl", torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert collective_device("gloo", torch.device("cuda", 1)) == torch.device("cpu")


def test_targets_are_built_on_the_labels_device():
    y = torch.tensor([0, 2], device="meta")
    assert one_hot(y, 3).device.type == "meta"
    torch.testing.assert_close(one_hot(torch.tensor([0, 2]), 3, 0.3),
                               torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]))


def test_an_fp16_overflow_skips_one_step_and_training_goes_on(tmp_path, monkeypatch):
    real = torch.amp.GradScaler
    scalers = []

    def huge_scale(device, **kw):  # starts far too high: the first steps overflow, as GradScaler expects
        scalers.append(real(device, init_scale=2.0 ** 40, **kw))
        return scalers[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", huge_scale)
    s = train(build_config(None, TINY + ["train.precision=fp16", "train.epochs=2", f"train.out={tmp_path / 'r'}"]),
              progress=False)
    assert s["status"] == "completed" and s["overflow_steps_skipped"] >= 1 and s["nonfinite_steps_skipped"] == 0
    assert s["steps"] > s["overflow_steps_skipped"] and scalers[0].get_scale() < 2.0 ** 40
    from vitkit.load import load_checkpoint
    model, _ = load_checkpoint(tmp_path / "r")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_random_state_round_trips_with_the_accelerators():
    state = devices.rng_state(torch.device("cpu"))
    assert state["cuda"] is None
    a = torch.rand(3)
    devices.set_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.rand(3), a)
    devices.set_rng_state(state["cpu"], torch.device("cpu"))  # an older checkpoint's bare CPU state
    assert torch.equal(torch.rand(3), a)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        state = devices.rng_state(cuda)
        b = torch.rand(3, device=cuda)
        devices.set_rng_state(state, cuda)
        assert torch.equal(torch.rand(3, device=cuda), b)


def test_the_fsdp_mesh_is_built_on_the_runs_device(monkeypatch):
    import torch.distributed.device_mesh as dm

    import vitkit.train.fsdp as fsdp
    seen = []
    monkeypatch.setattr(dm, "init_device_mesh", lambda kind, shape: seen.append((kind, shape)) or "mesh")
    real_api = fsdp._api
    calls = []
    monkeypatch.setattr(fsdp, "_api", lambda: (lambda m, **kw: calls.append(kw), *real_api()[1:]))
    fsdp.shard_model(create_model("vit_digits_patch4_8"), torch.device("cpu"), 2, torch.bfloat16)
    assert seen == [("cpu", (2,))] and all(kw["mesh"] == "mesh" for kw in calls) and len(calls) == 4 + 1
    assert calls[0]["mp_policy"].param_dtype == torch.bfloat16 and calls[0]["mp_policy"].reduce_dtype == torch.float32


def test_fixed_position_tables_are_built_once(monkeypatch):
    import vitkit.models.pos_embed as pe
    import vitkit.models.vit as vit
    built = {"sincos": 0, "offsets": 0}
    real_sincos, real_offsets = vit.sincos_2d, pe.relative_offsets
    monkeypatch.setattr(vit, "sincos_2d", lambda *a: built.__setitem__("sincos", built["sincos"] + 1) or real_sincos(*a))
    monkeypatch.setattr(pe, "relative_offsets",
                        lambda *a: built.__setitem__("offsets", built["offsets"] + 1) or real_offsets(*a))
    x = torch.randn(2, 1, 16, 16)
    for kind in ("sincos", "rel"):
        model = create_model("vit_digits_patch4_8", img_size=16, pos_embed=kind).eval()
        with torch.no_grad():
            first, second = model(x), model(x)
            fresh = create_model("vit_digits_patch4_8", img_size=16, pos_embed=kind).eval()
            fresh.load_state_dict(model.state_dict())
            torch.testing.assert_close(fresh(x), first)
        torch.testing.assert_close(first, second)
    assert built["sincos"] == 2 and built["offsets"] == 2 * 4  # once per model (and per block for rel)


def test_determinism_is_enforced_and_tf32_follows_it(restore_globals):
    devices.configure(torch.device("cpu"), deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    devices.configure(torch.device("cuda"), deterministic=False)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    devices.configure(torch.device("cuda"), deterministic=True)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_compiler_options_measured_on_a_cpu_stay_on_the_cpu(monkeypatch):
    from vitkit.models import compiled as comp
    got = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: got.append(kw["options"]) or m)
    comp.compiled(torch.nn.Linear(2, 2), freeze=True)
    with torch.device("meta"):
        comp.compiled(torch.nn.Linear(2, 2), freeze=True)  # any other device: inductor's own defaults
    assert got == [{"cpp_wrapper": True, "freezing": True}, {}]


def test_loader_workers_follow_the_device():
    assert devices.loader_workers(-1, torch.device("cpu")) == 0
    assert devices.loader_workers(3, torch.device("cpu")) == 3
    assert 0 <= devices.loader_workers(-1, torch.device("cuda")) <= 4
    assert devices.pin_memory(torch.device("cuda")) and not devices.pin_memory(torch.device("cpu"))


def test_the_gpu_check_script_parses_explains_itself_and_skips_without_a_gpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "tests/test_cuda.py" in usage.stdout and "Exit status" in usage.stdout
    if not torch.cuda.is_available():
        r = subprocess.run(["bash", str(script), str(tmp_path / "logs")], capture_output=True, text=True,
                           env={**__import__("os").environ, "PYTHON": sys.executable})
        assert r.returncode == 2 and "no CUDA GPU is visible" in r.stdout and not (tmp_path / "logs").exists()
    bench = subprocess.run([sys.executable, str(script.parents[1] / "benchmarks" / "throughput.py"), "--device", "gpu"],
                           capture_output=True, text=True)
    assert bench.returncode == 2 and "unknown device 'gpu'" in bench.stderr


def test_a_sharded_evaluation_runs_an_empty_forward_for_an_empty_slice():
    from vitkit.evaluate import evaluate
    model = create_model("vit_digits_patch4_8")
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    batches = [{"x": torch.randn(3, 1, 8, 8), "y": torch.tensor([0, 1, 2]), "skipped": []},
               {"x": None, "y": None, "skipped": []}]  # this process's slice of the last global batch is empty
    ev = evaluate(model, batches, 10, lockstep=True)
    assert seen == [3, 0] and ev.count == 3
    seen.clear()
    evaluate(model, batches, 10)
    assert seen == [3]


def test_accumulation_micro_batches_turn_fsdp_gradient_sync_off_and_back_on():
    from vitkit.train.loop import Trainer

    class Sharded(torch.nn.Module):  # what FSDP2's fully_shard adds to a module
        def __init__(self):
            super().__init__()
            self.calls = []

        def set_requires_gradient_sync(self, flag: bool) -> None:
            self.calls.append(flag)

    trainer = Trainer.__new__(Trainer)
    trainer.net = Sharded()
    with trainer._no_gradient_sync():
        assert trainer.net.calls == [False]
    assert trainer.net.calls == [False, True]
