"""`vitkit train`, `finetune` and `pretrain`: one training run each, into a run folder."""

from __future__ import annotations

import argparse

from ..errors import VitkitError
from ..run_dir import RunDir
from .common import precision_flag, resume_flag

FLAGS = {  # flag -> config key
    "data": "data.spec", "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "optim.lr",
    "out": "train.out", "seed": "train.seed", "device": "train.device", "workers": "data.num_workers",
    "precision": "train.precision",
}
SWITCHES = {  # on/off flag -> config key
    "download": "data.download", "strict": "data.strict", "grad_checkpointing": "train.grad_checkpointing",
    "fsdp": "train.fsdp", "compile": "train.compile",
}
PRESETS_HELP = "digits, mnist, mnist_long, mpp, vit_pretrain, vit_pretrain_i21k, vit_finetune"


def add_run_flags(p: argparse.ArgumentParser, default_config: str) -> None:
    """The flags every training command takes."""
    p.add_argument("--config", metavar="FILE|PRESET",
                   help=f"YAML file or shipped preset: {PRESETS_HELP} (default {default_config})")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set model.depth=6 --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--data", metavar="SPEC",
                   help="digits | synthetic | mnist:DIR | folder:DIR | cifar10:DIR | cifar100:DIR | "
                        "shards:DIR/train-{000000..000099}.tar (see `vitkit data pack`)")
    p.add_argument("--download", action="store_true",
                   help="download the dataset into DIR first (mnist, cifar10, cifar100; checksums verified)")
    p.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of skipping it")
    p.add_argument("--epochs", type=int, help="number of epochs (with --resume: extend the run to this many)")
    p.add_argument("--batch-size", type=int,
                   help="images per optimizer step, all processes together (under torchrun each process "
                        "takes batch-size / nproc)")
    p.add_argument("--lr", type=float, help="peak learning rate, for the global batch")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<timestamp>-<model>)")
    p.add_argument("--seed", type=int, help="seed for initialisation, data order and augmentation")
    p.add_argument("--device", help="where to train: cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--workers", type=int, help="data-loading worker processes (default: none on a CPU, up to 4 beside a GPU)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass: less memory, ~30%% more compute")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard parameters, gradients and optimizer state across processes (FSDP)")
    p.add_argument("--compile", action="store_true",
                   help="compile the training forward and backward (torch.compile): 1.25x faster steps for the "
                        "MNIST model on a 2-core CPU, nothing at 224 px; the first step waits 30-60 s for the compiler")
    precision_flag(p, default=None)
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    return overrides + [f"{key}=true" for flag, key in SWITCHES.items() if getattr(args, flag)]


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def _run(args: argparse.Namespace, default_config: str, extra: list[str]) -> int:
    """Build the config (preset <- flags <- --set), train, and turn the outcome into an exit status."""
    from ..config import build_config
    from ..train import train

    cfg = build_config(args.config or default_config, _flag_overrides(args) + extra + list(args.set))
    return 0 if train(cfg, progress=_progress(args))["status"] == "completed" else 130


def _resume(args: argparse.Namespace) -> int:
    from ..train import train

    given = [f for f in FLAGS if f != "epochs" and getattr(args, f) is not None]
    given += [f for f in SWITCHES if getattr(args, f)] + (["model"] if args.model else [])
    if given or args.set or args.config:
        raise VitkitError("--resume continues a run with its own configuration; only --epochs may change "
                          f"(got --{(given or ['set'])[0].replace('_', '-')})")
    summary = train(resume=args.resume, progress=_progress(args), epochs=args.epochs)
    return 0 if summary["status"] == "completed" else 130


def _sets_model(args: argparse.Namespace) -> bool:
    return any(item.strip().startswith("model.") for item in args.set)


def _train(args: argparse.Namespace) -> int:
    if args.resume:
        return _resume(args)
    extra = []
    if args.model:
        extra.append(f"model.name={args.model}")
    elif args.data and not args.config and not _sets_model(args):
        from ..train.fit_data import model_for_data

        model, why = model_for_data(args.data, args.download)
        print(why, flush=True)
        extra += [f"model.{k}={v}" for k, v in model.items()]
    return _run(args, "digits", extra)


def _finetune(args: argparse.Namespace) -> int:
    extra = [f"train.init={args.init}"]
    if args.img_size:
        extra.append(f"model.img_size={args.img_size}")
    if args.resample:
        extra.append(f"model.resample={args.resample}")
    if args.keep_head:
        extra.append("train.keep_head=true")
    return _run(args, "vit_finetune", extra)


def _pretrain(args: argparse.Namespace) -> int:
    if args.resume:
        return _resume(args)
    extra = [f"train.objective={args.objective}"] + ([f"model.name={args.model}"] if args.model else [])
    return _run(args, "mpp", extra)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (default: the small ViT on the built-in 8x8 digits)",
        description=f"Train a model into a run folder ({RunDir.contents()}). Settings come from a preset or YAML file, then --set overrides, then the "
                    "flags below. With --data but no --model or --config, a model is sized for the images "
                    "(their median size, a patch giving about 64-196 tokens) and the choice is printed. "
                    "Ctrl-C stops after the current step and saves a resumable checkpoint.")
    add_run_flags(p, default_config="digits")
    p.add_argument("--model", metavar="NAME",
                   help="registered model name (see `vitkit models`; default: the preset's, or one sized for --data)")
    resume_flag(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "finetune", help="fine-tune pretrained weights on new data (paper 3.2 / B.1.1)",
        description="Load weights (any format vitkit reads), resample the position embeddings to --img-size, "
                    "replace the head (and pre-logits layer) by a zero-initialised linear layer for the new "
                    "classes, and train with the paper's fine-tuning recipe (preset vit_finetune: SGD momentum "
                    "0.9, no weight decay, warm-up + cosine, clipping at 1) unless --config says otherwise.")
    p.add_argument("--init", required=True, metavar="SRC",
                   help="weights to start from: .npz, timm/HF file or folder, vitkit run or .safetensors, Hub name")
    add_run_flags(p, default_config="vit_finetune")
    p.add_argument("--img-size", type=int, metavar="N", help="fine-tuning resolution (default: the weights' own)")
    p.add_argument("--resample", choices=["official", "bilinear", "bicubic"],
                   help="position-embedding resampling (default: the source's own; official for .npz)")
    p.add_argument("--keep-head", action="store_true", help="keep the old head when the classes match")
    p.set_defaults(func=_finetune)

    p = sub.add_parser(
        "pretrain", help="self-supervised pre-training: masked patch prediction (paper B.1.2)",
        description="Pre-train a ViT without labels: 50%% of the patch embeddings are corrupted (80%% [mask] "
                    "embedding, 10%% another patch, 10%% unchanged) and the model predicts each corrupted patch's "
                    "mean colour at 3 bits per channel; scored by that patch-colour accuracy. The run folder's "
                    "checkpoints hold the encoder alone: `vitkit finetune --init RUN_DIR` starts from it. Same "
                    "flags and run folder as train.")
    p.add_argument("--objective", default="mpp", choices=["mpp"], help="the pre-training objective (default mpp)")
    add_run_flags(p, default_config="mpp")
    p.add_argument("--model", metavar="NAME", help="registered ViT name (see `vitkit models`; default: the preset's)")
    resume_flag(p)
    p.set_defaults(func=_pretrain)
