"""Faults, hostile files and bad input (issue: reliability). docs/reliability.md tabulates these tests."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from helpers import make_hostile_corpus, make_image_folder
from vitkit import VitkitError
from vitkit.checkpoint import load_state, model_meta, save_weights
from vitkit.load import load_checkpoint
from vitkit.cli import build_parser, main
from vitkit.config import build_config
from vitkit.data.images import read_image
from vitkit.interop import load_model
from vitkit.models import create_model
from vitkit.train import train

TINY = ["model.name=vit_digits_patch4_8", "model.embed_dim=32", "model.mlp_dim=64", "model.depth=2",
        "data.spec=synthetic", "model.img_size=16", "train.batch_size=32", "train.tensorboard=false",
        "optim.warmup_epochs=0.5", "train.log_every=1000"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small trained run whose checkpoint the command tests use."""
    out = tmp_path_factory.mktemp("rel") / "run"
    train(build_config("digits", TINY[:4] + ["data.spec=digits", "train.epochs=1", "train.tensorboard=false",
                                             f"train.out={out}"]), progress=False)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "dir with spaces"
    return root, make_hostile_corpus(root)


# --- 1. kill -9 at random moments ------------------------------------------------------------------------
KILL_CFG = TINY + ["train.epochs=1", "train.deterministic=true", "train.checkpoint_every=1",
                   "aug.randaugment_n=1", "model.drop_path_rate=0.1"]


KILLS = 12  # each costs a process start; the windows found so far have tests of their own that kill inside them


def _train_cmd(out: Path, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, "-m", "vitkit", "train", "--resume", str(out), "--no-progress"]
    return [sys.executable, "-m", "vitkit", "train", "--out", str(out), "--no-progress"] + \
        [a for s in KILL_CFG for a in ("--set", s)]


@pytest.mark.slow
def test_kill_9_at_random_moments_never_loses_the_run(tmp_path):
    """KILLS kills at random times (a checkpoint is written every step, so some land inside writes; the next
    test kills inside one for certain); after each the run folder holds loadable checkpoints, and resuming
    reaches the uninterrupted run's exact weights."""
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref, False), check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    expected = load_file(ref / "checkpoints" / "last.safetensors")
    rng = random.Random(1234)
    kills, trials = 0, 0
    while kills < KILLS:
        trials += 1
        out = tmp_path / f"chain{trials}"
        resume = False
        for _ in range(60):
            proc = subprocess.Popen(_train_cmd(out, resume), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
            if kills >= KILLS:  # enough trials: let this run finish
                assert proc.wait() == 0, proc.stderr.read().decode()[-2000:]
                break
            # Wait until this process has written a checkpoint of its own (so every kill lands in training,
            # whatever this machine's start-up time), then kill at a random moment of the following steps.
            state = out / "checkpoints" / "last.state.pt"
            before = state.stat().st_mtime_ns if state.exists() else None
            limit = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < limit and \
                    (not state.exists() or state.stat().st_mtime_ns == before):
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is not None:  # finished before the kill
                assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            ckpt = out / "checkpoints"
            if (ckpt / "last.state.pt").exists():
                load_state(ckpt / "last.state.pt")  # both files load after every kill
                load_checkpoint(ckpt / "last.safetensors")
                resume = True
            # else: killed before the first checkpoint; nothing to keep, and the same command starts afresh
        got = load_file(out / "checkpoints" / "last.safetensors")
        assert max((got[k] - expected[k]).abs().max().item() for k in expected) <= 1e-6
        assert not list((out / "checkpoints").glob(".*.tmp"))  # a resumed run clears stale temporaries


_HALF_WRITE = """
import pathlib, sys, time
from vitkit.files import atomic_write
def write(tmp):
    pathlib.Path(tmp).write_bytes(b"half a checkpoint")
    pathlib.Path(sys.argv[2]).touch()  # tell the test we are inside the write
    time.sleep(120)
atomic_write(pathlib.Path(sys.argv[1]), write)
"""


def test_kill_9_inside_a_checkpoint_write_keeps_the_previous_file(tmp_path):
    model = create_model("vit_digits_patch4_8")
    target, ready = tmp_path / "checkpoints" / "last.safetensors", tmp_path / "ready"
    save_weights(target, model, model_meta(model))
    before = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _HALF_WRITE, str(target), str(ready)])
    limit = time.monotonic() + 60
    while not ready.exists() and proc.poll() is None and time.monotonic() < limit:
        time.sleep(0.01)
    assert ready.exists(), "the writer never reached its write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == before  # the half-written temporary never replaced the checkpoint
    assert len(list(target.parent.glob(".*.tmp"))) == 1
    load_checkpoint(target)


# --- 2. disk full / read-only output during a save ----------------------------------------------------------
@pytest.mark.parametrize("code,needle", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system")])
def test_failing_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, code, needle):
    import vitkit.checkpoint as ck

    out = tmp_path / "r"
    state = {}

    def break_disk(trainer):
        if trainer.step == 4 and not state:
            state["before"] = (out / "checkpoints" / "last.safetensors").read_bytes()
            real = ck.save_file

            def failing(tensors, path, metadata=None):
                Path(path).write_bytes(b"partial")
                raise OSError(code, os.strerror(code))

            monkeypatch.setattr(ck, "save_file", failing)
            state["real"] = real

    with pytest.raises(VitkitError) as e:
        train(build_config(None, TINY + ["train.epochs=2", "train.checkpoint_every=2", f"train.out={out}"]),
              progress=False, on_step=break_disk)
    msg = str(e.value)
    assert "last.safetensors" in msg and needle in msg and "previous file is intact" in msg
    assert (out / "checkpoints" / "last.safetensors").read_bytes() == state["before"]
    assert not list((out / "checkpoints").glob(".*.tmp"))
    load_checkpoint(out / "checkpoints" / "last.safetensors")


# --- 3. hostile and broken images -----------------------------------------------------------------------------
def test_fixed_corpus_decodes_or_names_the_file(corpus):
    root, expect = corpus
    for name, good in expect.items():
        t0 = time.monotonic()
        if good:
            img = read_image(root / name, 3)
            assert img.dtype == torch.uint8 and img.shape[0] == 3 and min(img.shape[1:]) >= 1
        else:
            with pytest.raises(VitkitError) as e:
                read_image(root / name, 3)
            assert name in str(e.value) and "\n" not in str(e.value)
        assert time.monotonic() - t0 < 5, name


def test_exif_rotation_and_first_gif_frame_are_applied(corpus):
    root, _ = corpus
    assert tuple(read_image(root / "exif_rotated.jpg", 3).shape[1:]) == (30, 20)  # stored 20x30, shown rotated
    assert read_image(root / "animated.gif", 3)[:, 0, 0].tolist() == [254, 0, 0] or \
        read_image(root / "animated.gif", 3)[0, 0, 0] > 200


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=4096), header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff",
                                                                          b"GIF89a", b"BM", b"RIFF"]))
def test_random_bytes_never_crash_the_decoder(tmp_path, data, header):
    path = tmp_path / "fuzz.img"
    path.write_bytes(header + data)
    try:
        read_image(path, 1)
    except VitkitError as e:
        assert "fuzz.img" in str(e)


def test_predict_explain_and_eval_on_the_corpus(run, corpus, tmp_path, capsys):
    root, expect = corpus
    files = [str(root / n) for n in expect]
    code = main(["predict", "--checkpoint", str(run), "--json", *files])
    results = json.loads(capsys.readouterr().out)
    assert code == 1  # some files failed; the others were still predicted
    for r in results:
        name = Path(r["path"]).name
        assert (r.get("error") is None) == expect[name], r
        if r.get("error"):
            assert name in r["error"]
    good = [f for f in files if expect[Path(f).name]]
    assert main(["explain", "--checkpoint", str(run), "--out", str(tmp_path / "ex"), *good]) == 0
    assert len(list((tmp_path / "ex").glob("*_rollout.png"))) == len(good)
    bad = [f for f in files if not expect[Path(f).name]]
    assert main(["explain", "--checkpoint", str(run), "--out", str(tmp_path / "ex2"), good[0], *bad]) == 1
    err = capsys.readouterr().err
    assert all(Path(b).name in err for b in bad)
    # eval / training data loaders: a class folder holding the corpus; bad files skipped by name.
    data = make_image_folder(tmp_path / "folder", per_class=2, size=10, classes=tuple(str(c) for c in range(10)))
    for n in expect:
        (data / "1" / n).write_bytes((root / n).read_bytes())
    assert main(["eval", "--checkpoint", str(run), "--data", f"folder:{data}", "--split", "train", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    skipped = {Path(p).name for p in ev["skipped"]}
    assert skipped <= {n for n, g in expect.items() if not g}


# --- 4. hostile checkpoints -----------------------------------------------------------------------------------
def test_truncated_safetensors_is_a_clear_error(run, tmp_path):
    data = (run / "checkpoints" / "best.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(VitkitError, match="cut.safetensors"):
        load_model(cut)
    assert main(["eval", "--checkpoint", str(cut), "--data", "digits"]) == 2


def test_wrong_dtype_and_nan_weights(tmp_path):
    from safetensors import safe_open


    model = create_model("vit_digits_patch4_8", num_classes=10)
    save_weights(tmp_path / "good.safetensors", model, model_meta(model))
    with safe_open(str(tmp_path / "good.safetensors"), framework="pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

    def tampered(name: str, key: str, value: torch.Tensor) -> Path:
        save_file({**sd, key: value}, tmp_path / name, metadata=meta)
        return tmp_path / name

    with pytest.raises(VitkitError, match="tensor head.weight has dtype int64, expected floating point"):
        load_model(tampered("int.safetensors", "head.weight", sd["head.weight"].to(torch.int64)))
    nan = tampered("nan.safetensors", "blocks.0.mlp.fc1.weight", torch.full_like(sd["blocks.0.mlp.fc1.weight"], float("nan")))
    with pytest.warns(UserWarning, match="blocks.0.mlp.fc1.weight hold non-finite values"):
        load_model(nan)
    with pytest.warns(UserWarning, match="non-finite"):
        load_checkpoint(nan)


# --- 5. bad configuration, before any work ------------------------------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("model.patch_size=5", "patch_size 5 does not divide img_size 16x16"),
    ("model.num_heads=3", "embed_dim 32 is not divisible by num_heads 3"),
    ("optim.lr=-0.1", "optim.lr must be > 0"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.epochs=1.5", "train.epochs: expected an integer"),
    ("aug.label_smoothing=2", "aug.label_smoothing"),
    ("model.drop_path_rate=1.0", "drop_path_rate must be in [0, 1)"),
    ("train.precision=fp8", "train.precision"),
])
def test_impossible_values_are_refused_with_key_and_reason(tmp_path, override, needle):
    with pytest.raises(VitkitError) as e:
        train(build_config(None, TINY + [override, f"train.out={tmp_path / 'never'}"]), progress=False)
    assert needle in str(e.value)
    assert not (tmp_path / "never").exists()


# --- 7. every command: status 0 on success, non-zero and one line on a user error ------------------------------------
def _commands(run: Path, tmp: Path, img: str) -> list[tuple[list[str], list[str]]]:
    ck = str(run)
    return [
        (["models", "--filter", "mnist"], ["models", "--filter", "["]),
        (["train", "--out", str(tmp / "t"), "--epochs", "1", "--set", "model.depth=1"], ["train", "--data", "mnist:/nowhere"]),
        (["finetune", "--init", ck, "--data", "digits", "--out", str(tmp / "f"), "--epochs", "1"],
         ["finetune", "--init", str(tmp / "missing.safetensors"), "--data", "digits"]),
        (["convert", ck, str(tmp / "c.safetensors"), "--to", "timm"],
         ["convert", str(tmp / "nope.safetensors"), str(tmp / "x.safetensors"), "--to", "timm"]),
        (["explain", "--checkpoint", ck, "--out", str(tmp / "e"), img], ["explain", "--checkpoint", str(tmp), "--out", str(tmp / "e2"), img]),
        (["analyze", "--checkpoint", ck, "--data", "digits", "--out", str(tmp / "a"), "--num-images", "8"],
         ["analyze", "--checkpoint", ck, "--data", "folder:/nowhere", "--out", str(tmp / "a2")]),
        (["eval", "--checkpoint", ck, "--data", "digits"], ["eval", "--checkpoint", ck, "--data", "cifar7:x"]),
        (["predict", "--checkpoint", ck, img], ["predict", "--checkpoint", ck, "--top-k", "0", img]),
        (["data", "pack", "--data", "digits", "--out", str(tmp / "p"), "--shard-size", "1000"],
         ["data", "pack", "--data", "digits", "--out", str(tmp / "p2"), "--shard-size", "0"]),
    ]


@pytest.mark.slow
def test_every_command_exit_status_and_one_line_errors(run, corpus, tmp_path, capsys):
    root, _ = corpus
    for ok_args, bad_args in _commands(run, tmp_path, str(root / "plain.png")):
        assert main(ok_args) == 0, ok_args
        capsys.readouterr()
        code = main(bad_args)
        err = capsys.readouterr().err.strip()
        assert code not in (0, None) and "Traceback" not in err, (bad_args, err)
        assert len(err.splitlines()) == 1 and err.startswith(f"vitkit {bad_args[0]}: error:"), (bad_args, err)


def test_debug_flag_shows_the_traceback():
    r = subprocess.run([sys.executable, "-m", "vitkit", "--debug", "train", "--set", "optim.lr=-1"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr and "optim.lr must be > 0" in r.stderr


# --- 8. fuzzing the CLI parser and the config loader ------------------------------------------------------------------
TOKENS = ["train", "finetune", "eval", "predict", "models", "data", "pack", "--set", "--data", "--epochs", "--lr",
          "--config", "--resume", "--top-k", "-1", "0", "1e9", "nan", "optim.lr=1", "model.depth=x", "=", "", "é",
          "--help-me", "digits", "a.b.c=d", "--out", "--checkpoint", "--to", "npz"]


@settings(max_examples=300, deadline=1000)
@given(st.lists(st.sampled_from(TOKENS) | st.text(max_size=12), max_size=8))
def test_cli_parser_fuzz_only_parses_or_exits_cleanly(argv):
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as e:  # argparse's usage error (status 2) or --help (0)
        assert e.code in (0, 2)


@settings(max_examples=300, deadline=1000)
@given(st.lists(st.text(max_size=30) | st.sampled_from(["optim.lr=1e-3", "model.depth=3", "train.epochs=-1",
                                                          "model.name=vit_nope", "aug.mixup=0.2", "data.spec="]),
                max_size=5))
def test_config_overrides_fuzz_give_a_config_or_a_vitkit_error(overrides):
    try:
        build_config(None, overrides)
    except VitkitError as e:
        assert str(e) and "\n" not in str(e)


@settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200) | st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                                            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                                            max_leaves=10).map(lambda v: json.dumps(v)))
def test_yaml_config_fuzz_gives_a_config_or_a_vitkit_error(tmp_path, text):
    f = tmp_path / "fuzz.yaml"
    f.write_text(text)
    try:
        build_config(f)
    except VitkitError as e:
        assert str(e)
