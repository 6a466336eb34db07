"""The command line as a user meets it: every user mistake is one line that names it (one table), every
flag's help explains it, and `vitkit train --data` picks a model that fits the images."""

import argparse
import json

import pytest
import yaml

from helpers import make_image_folder
from vitkit.checkpoint import model_meta, save_weights
from vitkit.cli import build_parser, main
from vitkit.config import build_config
from vitkit.models import create_model
from vitkit.train import train

TINY = ["model.name=vit_digits_patch4_8", "model.embed_dim=32", "model.mlp_dim=64", "model.depth=1",
        "train.batch_size=64", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trained run, a weights file without preprocessing, a junk .onnx file and an empty folder."""
    root = tmp_path_factory.mktemp("cli")
    train(build_config(None, TINY + ["data.spec=digits", "train.epochs=1", f"train.out={root / 'run'}"]),
          progress=False)
    bare = create_model("vit_digits_patch4_8")
    save_weights(root / "bare.safetensors", bare, model_meta(bare))  # weights and config, no preprocessing
    (root / "junk.onnx").write_bytes(b"not a model")
    (root / "empty").mkdir()
    return root


# (command line with {root} standing for the fixture's folder, what the one line must say)
ONE_LINE_ERRORS = [
    (["train", "--data", "mnist:{root}/none"], "does not exist"),
    (["train", "--set", "optim.lr=abc"], "optim.lr: expected a number"),
    (["train", "--model", "vit_nope"], "unknown model 'vit_nope'"),
    (["train", "--set", "optim.name=adam"], "optim.weight_decay=0.05 would be ignored"),
    (["train", "--set", "optim.momentum=0.5"], "optim.momentum=0.5 would be ignored: only optim.name=sgd"),
    (["train", "--set", "optim.warmup_steps=10", "--set", "optim.warmup_epochs=2"], "optim.warmup_epochs=2.0"),
    (["train", "--resume", "{root}/run", "--lr", "0.1"], "only --epochs may change (got --lr)"),
    (["train", "--resume", "{root}/run", "--compile"], "(got --compile)"),
    (["train", "--resume", "{root}/empty"], "no checkpoints/last.state.pt"),
    (["train", "--data", "shards:{root}/none-{{0..1}}.tar"], "not found"),
    (["pretrain", "--model", "resnet_bit_mnist", "--data", "synthetic", "--out", "{root}/p", "--epochs", "1",
      "--set", "model.img_size=16"], "needs a ViT encoder"),
    (["eval", "--checkpoint", "{root}/bare.safetensors", "--data", "digits"], "records no preprocessing"),
    (["eval", "--checkpoint", "{root}/empty", "--data", "digits"], "holds no weights"),
    (["eval", "--checkpoint", "{root}/junk.onnx", "--data", "synthetic"], "junk.onnx"),
    (["export", "--checkpoint", "{root}/junk.onnx", "--out", "{root}/again.onnx"], "already an exported file"),
    (["predict", "--checkpoint", "{root}/run", "--top-k", "0", "{root}/bare.safetensors"], "top-k must be at least 1"),
    (["cost", "--model", "vit_tiny_patch16_224", "--img-size", "100"], "100"),
    (["cost", "--model", "vit_tiny_patch16_224", "--img-size", "a,b"], "--img-size expects comma-separated integers"),
    (["cost", "--model", "resnet_bit_mnist", "--img-size", "28"], "resnet_bit_mnist"),
    (["fewshot", "--checkpoint", "{root}/run", "--data", "digits", "--shots", "one"], "--shots expects"),
    (["fewshot", "--checkpoint", "{root}/run", "--data", "digits", "--shots", "100000"], "fewer than 100000 shots"),
    (["models", "--filter", "nomatch"], "no registered model matches 'nomatch'"),
    (["eval", "--checkpoint", "{root}/run", "--data", "digits", "--device", "gpu"], "unknown device 'gpu': use cuda"),
    (["predict", "--checkpoint", "{root}/run", "--device", "cuda:99", "{root}/bare.safetensors"], "cuda:99"),
    (["explain", "--checkpoint", "{root}/run", "--out", "{root}/ex", "--device", "tpu", "{root}/bare.safetensors"],
     "unknown device 'tpu'"),
    (["analyze", "--checkpoint", "{root}/run", "--data", "digits", "--out", "{root}/an", "--device", "cuda:99"], "cuda:99"),
    (["train", "--device", "cuda:99"], "cuda:99"),
    (["data", "pack", "--data", "digits", "--out", "{root}/pk", "--shard-size", "0"], "--shard-size must be"),
]


@pytest.mark.parametrize("argv, needle", ONE_LINE_ERRORS, ids=[" ".join(a[:2]) + f" [{n[:24]}]" for a, n in ONE_LINE_ERRORS])
def test_user_mistakes_are_one_line_that_names_them(files, argv, needle, capsys):
    argv = [a.format(root=files) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert len(err.splitlines()) == 1 and err.startswith(f"vitkit {argv[0]}: error:"), err
    assert needle in err and "Traceback" not in err, err
    assert not (files / "again.onnx").exists()


def _actions(parser: argparse.ArgumentParser, path: tuple = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, path + (name,))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_flag_of_every_command_is_explained():
    actions = list(_actions(build_parser()))
    assert len({p for p, _ in actions}) >= 15  # every sub-command is reached
    for path, action in actions:
        where = f"vitkit {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        words = (action.help or "").replace("%%", "%").split()
        assert len(words) >= 3, f"{where}: help {action.help!r} does not explain it"
        names = {s.lstrip("-").replace("-", "_") for s in action.option_strings} | {action.dest}
        assert not set(w.strip(",.()").replace("-", "_") for w in words) <= names | {"the", "a"}, where
        stated = action.default not in (None, False, [], argparse.SUPPRESS) and not action.required
        if action.option_strings and stated:
            assert "default" in action.help, f"{where}: the default ({action.default!r}) is not stated"


def test_train_picks_a_model_that_fits_the_images(tmp_path, capsys):
    data = make_image_folder(tmp_path / "textures", per_class=12, size=32)
    out = tmp_path / "run"
    assert main(["train", "--data", f"folder:{data}", "--epochs", "1", "--out", str(out), "--no-progress",
                 "--set", "train.tensorboard=false"]) == 0
    said = capsys.readouterr().out
    assert "at 32x32 px with 4-px patches (8x8 = 64 tokens), 3 channels: the median training image is 32x32" in said
    assert "warning" not in said
    model = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert (model["img_size"], model["patch_size"], model["in_chans"]) == (32, 4, 3)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_a_model_far_from_the_image_size_is_warned_about(tmp_path, capsys):
    data = make_image_folder(tmp_path / "textures", per_class=12, size=32)
    assert main(["train", "--data", f"folder:{data}", "--model", "vit_digits_patch4_8", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--no-progress", "--set", "train.tensorboard=false"]) == 0
    said = capsys.readouterr().out
    assert "warning: the model's input is 8x8 px but the median training image is 32x32: every image is shrunk" \
        in said
    assert "model: " not in said  # --model given: nothing picked


def test_the_digits_default_stays_as_it_is():
    cfg = build_config("digits")
    assert cfg.model_name == "vit_digits_patch4_8" and cfg.data.spec == "digits"
