"""Training end to end: run folder, resume exactness, eval/predict, configuration and failure paths."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from helpers import make_image_folder
from vitkit import VitkitError
from vitkit.checkpoint import load_state_dict_checked
from vitkit.load import load_checkpoint
from vitkit.config import build_config, presets
from vitkit.models import build_model, create_model, model_config
from vitkit.train import train
from vitkit.train.optim import EMA, build_optimizer, lr_at, param_groups, warmup_steps

QUICK = ["model.name=vit_digits_patch4_8", "model.embed_dim=32", "model.mlp_dim=64", "model.depth=2",
         "train.batch_size=64", "train.epochs=2", "train.tensorboard=false", "train.log_every=5",
         "optim.lr=3e-3", "optim.warmup_epochs=0.5"]


def quick_cfg(out: Path, *extra: str, data: str = "synthetic"):
    return build_config(overrides=QUICK + [f"data.spec={data}", f"train.out={out}", "model.img_size=16"] + list(extra))


def vitkit_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    summary = train(quick_cfg(out, "train.epochs=3", "model.drop_path_rate=0.1"), progress=False)
    return out, summary


def test_run_folder_holds_everything(trained_run):
    out, summary = trained_run
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "summary.json", "checkpoints/last.safetensors",
                 "checkpoints/last.state.pt", "checkpoints/best.safetensors"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    assert len(epochs) == 3 and steps
    assert {"loss", "acc", "lr", "img_s"} <= set(steps[0]) and {"val_acc", "train_loss", "img_s"} <= set(epochs[0])
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert {"test_acc", "best_val_acc", "wall_time_s", "params", "img_s"} <= set(saved)
    assert saved["test_acc"] > 0.9  # the synthetic task is easy
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["depth"] == 2 and cfg["data"]["spec"] == "synthetic"


def test_checkpoint_records_preprocessing_and_classes(trained_run):
    out, _ = trained_run
    model, meta = load_checkpoint(out)
    assert meta["preprocess"]["img_size"] == [16, 16] and meta["preprocess"]["mean"] == [0.5]
    assert meta["classes"] == ["class0", "class1", "class2", "class3"] and model.num_classes == 4


def test_lr_schedule_warmup_then_cosine():
    cfg = build_config(overrides=["optim.lr=1.0", "optim.min_lr=0.0"]).optim
    lrs = [lr_at(s, 100, 10, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5, abs=0.02) and lrs[99] < 0.01
    cfg.schedule = "linear"
    assert lr_at(55, 100, 10, cfg) == pytest.approx(0.5)


def test_no_decay_on_biases_norms_positions_tokens():
    model = create_model("vit_digits_patch4_8")
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed", "norm.weight", "blocks.0.attn.qkv.bias"} <= no_decay_names
    assert all(p.ndim >= 2 for p in decay["params"]) and "pos_embed" not in {names[id(p)] for p in decay["params"]}


def test_optimisers_are_the_papers():
    model = create_model("vit_digits_patch4_8")
    adamw = build_optimizer(model, build_config(overrides=["optim.name=adamw", "optim.weight_decay=0.05"]).optim)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    adam = build_optimizer(model, build_config(overrides=["optim.name=adam", "optim.weight_decay=0"]).optim)
    assert type(adam) is torch.optim.Adam and [g["weight_decay"] for g in adam.param_groups] == [0.0, 0.0]
    sgd = build_optimizer(model, build_config(overrides=["optim.name=sgd"]).optim)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


@pytest.mark.parametrize("overrides, key", [
    (["optim.name=adam"], "optim.weight_decay"),                      # the default 0.05 would be dropped
    (["optim.name=adam", "optim.weight_decay=0.1"], "optim.weight_decay"),
    (["optim.momentum=0.5"], "optim.momentum"),                       # adamw has no momentum
    (["optim.name=sgd", "optim.beta2=0.99"], "optim.beta2"),
    (["optim.schedule=constant", "optim.min_lr=1e-5"], "optim.min_lr"),
    (["optim.warmup_steps=100", "optim.warmup_epochs=2"], "optim.warmup_epochs"),
    (["train.objective=mpp", "aug.mixup=0.2"], "aug.mixup"),
    (["train.keep_head=true"], "train.keep_head"),
    (["data.shuffle_buffer=10"], "data.shuffle_buffer"),
])
def test_values_that_would_be_ignored_are_errors_naming_the_key(overrides, key):
    with pytest.raises(VitkitError, match=rf"^{key}=.* would be ignored"):
        build_config(overrides=overrides)


@pytest.mark.parametrize("preset", presets())
def test_every_shipped_preset_builds_its_optimiser_and_schedule(preset):
    cfg = build_config(preset)
    with torch.device("meta"):
        model = build_model(model_config(cfg.model_name, **cfg.model_overrides))
    opt = build_optimizer(model, cfg.optim)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    expected_decay = 0.0 if cfg.optim.name == "adam" else cfg.optim.weight_decay
    assert opt.param_groups[0]["weight_decay"] == expected_decay and decayed
    steps_per_epoch = 100
    warmup = warmup_steps(cfg.optim, steps_per_epoch)
    total = max(cfg.train.epochs * steps_per_epoch, warmup + 10)
    lrs = [lr_at(s, total, warmup, cfg.optim) for s in range(total)]
    assert max(lrs) == pytest.approx(cfg.optim.lr) and lrs[0] <= cfg.optim.lr
    end = lr_at(total, total, warmup, cfg.optim)  # where the decay arrives, once the last step is done
    assert end == pytest.approx(cfg.optim.min_lr if cfg.optim.schedule != "constant" else cfg.optim.lr)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))


def test_pretraining_preset_is_the_papers_and_decays_weight_matrices():
    cfg = build_config("vit_pretrain")
    o = cfg.optim
    assert (o.name, o.beta1, o.beta2, o.weight_decay, o.warmup_steps, o.schedule, cfg.train.batch_size) == \
        ("adamw", 0.9, 0.999, 0.1, 10_000, "linear", 4096)
    assert warmup_steps(o, steps_per_epoch=3) == 10_000      # given in steps, whatever the data set's size
    model = create_model("vit_digits_patch4_8")             # the preset's optimiser on a small model
    opt = build_optimizer(model, o)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(3):
        lr = lr_at(step, 100_000, 10_000, o)
        for g in opt.param_groups:
            g["lr"] = lr
        for p in model.parameters():
            p.grad = torch.zeros_like(p)                      # Adam's update is 0: what moves is the decay alone
        opt.step()
        for n, p in model.named_parameters():
            factor = (1 - lr * 0.1) if p.ndim >= 2 and n not in ("cls_token", "pos_embed") else 1.0
            torch.testing.assert_close(p.detach(), before[n] * factor, rtol=0, atol=1e-9)
            before[n] = p.detach().clone()
    assert lr_at(0, 100_000, 10_000, o) == pytest.approx(8e-4 / 10_000)


def test_ema_is_an_exponential_average_of_the_weights():
    model = torch.nn.Linear(3, 2)
    ema, before = EMA(model, 0.9), model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], 0.9 * before + 0.1 * model.weight, atol=1e-6)


def test_gradients_are_clipped_to_the_global_norm(tmp_path):
    assert build_config().optim.clip_grad == 1.0  # the paper's default
    weights = []
    record = lambda t: weights.append(torch.cat([p.detach().flatten().clone() for p in t.model.parameters()]))
    # plain SGD at lr 1 without decay: each step moves the weights by exactly the clipped gradient
    train(quick_cfg(tmp_path / "c", "optim.name=sgd", "optim.momentum=0", "optim.weight_decay=0", "optim.lr=1",
                    "optim.schedule=constant", "optim.warmup_epochs=0", "optim.clip_grad=0.01", "train.epochs=1"),
          progress=False, on_step=record)
    steps = [float((b - a).norm()) for a, b in zip(weights, weights[1:])]
    assert len(steps) >= 3 and all(s == pytest.approx(0.01, rel=1e-3) for s in steps), steps


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_and_resumed_run_ends_with_same_weights(tmp_path, workers):
    extra = ["model.drop_path_rate=0.1", "model.drop_rate=0.1", "aug.randaugment_n=1", "aug.mixup=0.2",
             "train.deterministic=true", f"data.num_workers={workers}", "optim.accum_steps=2", "train.ema_decay=0.9"]
    full = train(quick_cfg(tmp_path / "full", *extra), progress=False)

    def stop_mid_epoch(trainer):
        if trainer.step == 11:  # epoch 1 has 15 optimizer steps: stop inside it
            trainer.request_stop()

    part = train(quick_cfg(tmp_path / "part", *extra), progress=False, on_step=stop_mid_epoch)
    assert part["status"] == "interrupted" and part["steps"] == 11
    resumed = train(resume=tmp_path / "part", progress=False)
    assert resumed["status"] == "completed" and resumed["steps"] == full["steps"]
    a = load_file(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = load_file(tmp_path / "part" / "checkpoints" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert resumed["test_acc"] == full["test_acc"]


def test_killed_while_writing_the_best_weights_resumes_to_a_complete_run(tmp_path, monkeypatch):
    """A kill at the end of the last epoch, as best.safetensors is written: the saved state must not yet say
    that epoch ended, or the resumed run would finish at once and find no best weights for its test."""
    import vitkit.train.loop as loop

    class Killed(BaseException):
        pass

    write = loop.save_weights

    def killed_at_best(path, *args, **kwargs):
        if path.name == "best.safetensors":
            raise Killed
        return write(path, *args, **kwargs)

    monkeypatch.setattr(loop, "save_weights", killed_at_best)
    with pytest.raises(Killed):
        train(quick_cfg(tmp_path / "run", "train.epochs=1", "train.checkpoint_every=1"), progress=False)
    monkeypatch.setattr(loop, "save_weights", write)
    resumed = train(resume=tmp_path / "run", progress=False)
    assert resumed["status"] == "completed" and resumed["epochs"] == 1
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").is_file() and "test_acc" in resumed
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r.get("kind") == "epoch"] == [1]  # the repeated epoch end, logged once


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(tmp_path):
    """train.compile changes the speed, not the run: the same losses step by step, the same weights up to
    float rounding, and checkpoints with the plain module's keys."""
    def run(name: str, *extra: str):
        train(quick_cfg(tmp_path / name, "train.epochs=1", "train.log_every=1", *extra), progress=False)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if r["kind"] == "step"], load_file(tmp_path / name / "checkpoints" /
                                                                              "last.safetensors")
    eager_losses, eager = run("eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_losses, compiled = run("compiled", "train.compile=true")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the steps did run compiled
    assert len(eager_losses) == len(compiled_losses) > 20
    assert np.allclose(eager_losses, compiled_losses, atol=1e-3)
    assert eager.keys() == compiled.keys()
    assert max((eager[k] - compiled[k]).abs().max().item() for k in eager) <= 1e-3
    model, _ = load_checkpoint(tmp_path / "compiled")
    assert not any("_orig_mod" in k for k in model.state_dict())


def test_resume_extends_epochs(tmp_path, trained_run):
    import shutil
    out, first = trained_run
    run = tmp_path / "longer"
    shutil.copytree(out, run)
    more = train(resume=run, epochs=first["epochs"] + 1, progress=False)
    assert more["status"] == "completed" and more["epochs"] == first["epochs"] + 1
    assert more["steps"] == first["steps"] * (first["epochs"] + 1) // first["epochs"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == first["epochs"] + 1


@pytest.mark.parametrize("overrides,needle", [
    (["optim.lrr=1"], "did you mean 'lr'"),
    (["optim.lr=-1"], "optim.lr must be > 0"),
    (["model.patch_size=3"], "patch_size 3 does not divide"),
    (["train.epochs=ten"], "train.epochs: expected an integer"),
    (["model.num_heads=5"], "not divisible by num_heads"),
    (["data.val_fraction=1.5"], "data.val_fraction must be in"),
    (["optim.name=adamx"], "unknown optim.name"),
    (["bogus.key=1"], "unknown config section 'bogus'"),
])
def test_bad_configuration_rejected_before_any_work(tmp_path, overrides, needle):
    out = tmp_path / "never"
    with pytest.raises(VitkitError, match=needle):
        train(quick_cfg(out, *overrides), progress=False)
    assert not out.exists()


def test_config_file_and_set_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {name: vit_mnist_patch7_28, depth: 3}\noptim: {lr: 0.5}\n")
    cfg = build_config(f, ["optim.lr=1e-3", "model.depth=6", "aug.hflip=true"])
    assert cfg.model == {"name": "vit_mnist_patch7_28", "depth": 6} and cfg.optim.lr == 1e-3 and cfg.aug.hflip
    f.write_text("optim: [1, 2]\n")
    with pytest.raises(VitkitError, match="must be a mapping"):
        build_config(f)
    with pytest.raises(VitkitError, match="unknown config preset 'mnst'; did you mean 'mnist'"):
        build_config("mnst")


def test_eval_command_writes_metrics_and_confusion(trained_run, tmp_path):
    out, summary = trained_run
    r = vitkit_cli("eval", "--checkpoint", str(out), "--data", "synthetic", "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["top1"] == pytest.approx(summary["test_acc"])
    assert set(result["per_class"]) == {"class0", "class1", "class2", "class3"} and result["top5"] == 1.0
    assert (tmp_path / "ev" / "confusion.png").stat().st_size > 1000
    assert f"top-1 {summary['test_acc']:.4f}" in r.stdout


def test_predict_applies_stored_preprocessing_and_reports_bad_files(trained_run, tmp_path):
    out, _ = trained_run
    img = np.full((48, 48), 20, dtype=np.uint8)
    img[24:, 24:] = 210  # class 3: bright bottom-right quadrant, at 3x the trained size, in RGB
    Image.fromarray(img).convert("RGB").save(tmp_path / "q3 with space.png")
    (tmp_path / "notes.txt").write_text("not an image")
    r = vitkit_cli("predict", "--checkpoint", str(out), str(tmp_path / "q3 with space.png"), str(tmp_path / "notes.txt"),
                   "--json", "--top-k", "2")
    assert r.returncode == 1
    res = json.loads(r.stdout)
    assert res[0]["top"][0]["class"] == "class3" and len(res[0]["top"]) == 2
    assert "notes.txt" in res[1]["error"] and "notes.txt" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("fmt", ["onnx", "int8"])
def test_exported_files_run_in_eval_and_predict(trained_run, tmp_path, fmt):
    pytest.importorskip("onnxruntime")
    out, summary = trained_run
    onnx_file = tmp_path / f"m-{fmt}.onnx"
    r = vitkit_cli("export", "--checkpoint", str(out), "--format", fmt, "--out", str(onnx_file))
    assert r.returncode == 0, r.stderr
    ev = vitkit_cli("eval", "--checkpoint", str(onnx_file), "--data", "synthetic", "--out", str(tmp_path / "ev"))
    assert ev.returncode == 0, ev.stderr
    top1 = json.loads((tmp_path / "ev" / "eval.json").read_text())["top1"]
    if fmt == "onnx":
        assert top1 == pytest.approx(summary["test_acc"])
    else:  # int8 weights and activations: within 3 points on this small synthetic test set
        assert abs(top1 - summary["test_acc"]) <= 0.03
    img = np.full((48, 48), 20, dtype=np.uint8)
    img[24:, 24:] = 210
    Image.fromarray(img).save(tmp_path / "q3.png")
    pr = vitkit_cli("predict", "--checkpoint", str(onnx_file), str(tmp_path / "q3.png"), "--json")
    assert pr.returncode == 0, pr.stderr
    assert json.loads(pr.stdout)[0]["top"][0]["class"] == "class3"


def test_folder_training_with_mixed_sizes_and_a_corrupt_file(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=15)
    Image.new("RGB", (40, 23), (230, 230, 230)).save(root / "dog" / "odd_size.png")
    (root / "eel" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n...")
    with pytest.warns(UserWarning, match="broken.png"):
        s = train(quick_cfg(tmp_path / "run", "data.test_fraction=0.01", "data.val_fraction=0.01",
                            "train.batch_size=8", data=f"folder:{root}"), progress=False)
    assert s["skipped_files"] == 1 and s["skipped"][0].endswith("broken.png")
    with pytest.raises(VitkitError, match="broken.png"):
        train(quick_cfg(tmp_path / "strict", "data.strict=true", "data.test_fraction=0.01",
                        "data.val_fraction=0.01", "train.batch_size=8", data=f"folder:{root}"), progress=False)


def test_checkpoint_model_mismatch_names_keys_and_shapes():
    small = create_model("vit_digits_patch4_8")
    other = create_model("vit_digits_patch4_8", embed_dim=64, mlp_dim=128, depth=5)
    with pytest.raises(VitkitError, match=r"shape mismatch cls_token: file \(1, 1, 64\) vs model \(1, 1, 96\)"):
        load_state_dict_checked(small, other.state_dict(), "other.safetensors")
    with pytest.raises(VitkitError, match="unexpected keys blocks.4"):
        load_state_dict_checked(small, {**small.state_dict(), "blocks.4.norm1.weight": torch.ones(96)}, "x")


def test_nonfinite_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    def poison(trainer):
        if trainer.step == 5:  # weights go bad after the checkpoint of step 4
            with torch.no_grad():
                trainer.model.patch_embed.proj.weight.fill_(float("nan"))

    with pytest.raises(VitkitError, match=r"loss became nan at step 6; training stopped, the last good checkpoint"):
        train(quick_cfg(tmp_path / "r", "train.checkpoint_every=2"), progress=False, on_step=poison)
    model, meta = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert meta["step"] == 4 and all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_nonfinite_counts_skipped_steps(tmp_path):
    def poison(trainer):
        if trainer.step == 3:  # from here on every loss is inf: each step is skipped, none applied
            with torch.no_grad():
                trainer.model.head.bias[0] = float("inf")

    # the poisoned weights reach a checkpoint; loading it for the final test names the tensor
    with pytest.warns(UserWarning, match=r"head\.bias hold non-finite values"):
        s = train(quick_cfg(tmp_path / "b", "train.skip_nonfinite=true"), progress=False, on_step=poison)
    assert s["status"] == "completed" and s["nonfinite_steps_skipped"] > 0


def test_existing_run_dir_is_not_overwritten(trained_run):
    out, _ = trained_run
    with pytest.raises(VitkitError, match="already holds a run"):
        train(quick_cfg(out), progress=False)


@pytest.mark.slow
def test_default_train_command_reaches_97_percent_on_digits(tmp_path):
    """The README's main job: `vitkit train` with no arguments (digits, >= 97% test accuracy)."""
    r = vitkit_cli("train", "--out", str(tmp_path / "run"), "--no-progress", "--set", "train.tensorboard=false")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_acc"] >= 0.97 and summary["model"] == "vit_digits_patch4_8"


def test_deferred_host_reads_train_the_same_weights_and_catch_a_nonfinite_step(tmp_path):
    """What CUDA runs do by default (reads at logging steps only), forced on the CPU: same weights, same
    metrics; a non-finite step stops the run before any checkpoint takes its weights."""
    from vitkit.train.loop import Trainer
    cfg = quick_cfg(tmp_path / "eager", "train.epochs=1", "optim.accum_steps=2")
    plain = train(cfg, progress=False)
    deferred = Trainer(quick_cfg(tmp_path / "deferred", "train.epochs=1", "optim.accum_steps=2"),
                       tmp_path / "deferred", progress=False, defer_host_reads=True)
    summary = deferred.run()
    assert deferred.defer and summary["host_reads"] == "deferred to logging steps"
    assert plain["host_reads"] == "every step"
    a = load_file(tmp_path / "eager" / "checkpoints" / "last.safetensors")
    b = load_file(tmp_path / "deferred" / "checkpoints" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    assert summary["test_acc"] == plain["test_acc"] and summary["best_val_acc"] == plain["best_val_acc"]

    def poison(trainer):
        if trainer.step == 5:  # weights go bad after the checkpoint of step 4
            with torch.no_grad():
                trainer.model.patch_embed.proj.weight.fill_(float("nan"))

    out = tmp_path / "poisoned"
    with pytest.raises(VitkitError, match=r"non-finite in 1 step\(s\) by step 6; training stopped, the last good"):
        Trainer(quick_cfg(out, "train.checkpoint_every=2"), out, progress=False, on_step=poison,
                defer_host_reads=True).run()
    model, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["step"] == 4 and all(torch.isfinite(p).all() for p in model.parameters())
