"""The `vitkit` command: one sub-command per user task, each a thin shell over a library function."""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
from typing import Callable, Sequence

from .errors import VitkitError
from .runtime import tune_allocator

Command = Callable[[argparse.Namespace], int | None]


def _models(args: argparse.Namespace) -> None:
    from .models import count_params, list_models, model_config

    names = list_models(args.filter)
    if not names:
        raise VitkitError(f"no registered model matches '{args.filter}'")
    rows = []
    for name in names:
        cfg = model_config(name)
        h, w = cfg.img_size
        rows.append((name, f"{count_params(cfg):,}", f"{cfg.in_chans}x{h}x{w}"))
    widths = [max(len(r[i]) for r in rows + [("model", "params", "input")]) for i in range(3)]
    print(f"{'model':<{widths[0]}}  {'params':>{widths[1]}}  input")
    for name, params, size in rows:
        print(f"{name:<{widths[0]}}  {params:>{widths[1]}}  {size}")


TRAIN_FLAGS = {  # flag -> config key
    "data": "data.spec", "model": "model.name", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "lr": "optim.lr", "out": "train.out", "seed": "train.seed", "device": "train.device",
    "workers": "data.num_workers",
}
SWITCHES = {  # on/off flag -> config key
    "download": "data.download", "strict": "data.strict", "grad_checkpointing": "train.grad_checkpointing",
    "fsdp": "train.fsdp", "compile": "train.compile",
}


def _train(args: argparse.Namespace) -> int:
    from .config import build_config
    from .train import train

    progress = False if args.no_progress else None
    if args.resume:
        given = [f for f in TRAIN_FLAGS if f != "epochs" and getattr(args, f) is not None]
        given += [f for f in SWITCHES if getattr(args, f)]
        if given or args.set or args.config:
            raise VitkitError("--resume continues a run with its own config.yaml; only --epochs may change "
                              f"(got --{(given or ['set'])[0].replace('_', '-')})")
        summary = train(resume=args.resume, progress=progress, epochs=args.epochs)
    else:
        overrides = [f"{key}={getattr(args, flag)}" for flag, key in TRAIN_FLAGS.items()
                     if getattr(args, flag) is not None]
        overrides += [f"{key}=true" for flag, key in SWITCHES.items() if getattr(args, flag)]
        if getattr(args, "objective", None):
            overrides.append(f"train.objective={args.objective}")
        if args.init:
            overrides.append(f"train.init={args.init}")
            if args.img_size:
                overrides.append(f"model.img_size={args.img_size}")
            if args.resample:
                overrides.append(f"model.resample={args.resample}")
            if args.keep_head:
                overrides.append("train.keep_head=true")
        cfg = build_config(args.config or args.default_config, overrides + list(args.set))
        summary = train(cfg, progress=progress)
    return 0 if summary["status"] == "completed" else 130


def _eval(args: argparse.Namespace) -> None:
    import json

    from .evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.out, args.batch_size, args.device,
                            args.workers, compile=args.compile)
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "confusion"}, indent=2))
        return
    print(f"{r['checkpoint']} on {r['data']} [{r['split']}]: {r['count']} images")
    print(f"top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  loss {r['loss']:.4f}")
    print("per class: " + ", ".join(f"{c} {a:.3f}" for c, a in r["per_class"].items()))
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} unreadable file(s): {', '.join(r['skipped'][:5])}")
    if args.out:
        print(f"wrote {args.out}/eval.json and {args.out}/confusion.png")


def _predict(args: argparse.Namespace) -> int:
    import json

    from .predict import predict

    results = predict(args.checkpoint, args.images, args.top_k, device=args.device, compile=args.compile)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    for r in results:
        if r.error:
            print(f"vitkit predict: error: {r.error}", file=sys.stderr)
        elif not args.json:
            print(f"{r.path}: " + ", ".join(f"{c} {p:.4f}" for c, p in r.top))
    return 1 if any(r.error for r in results) else 0


def _run_flags(p: argparse.ArgumentParser, default_config: str) -> None:
    p.add_argument("--config", metavar="FILE|PRESET",
                   help=f"YAML file or shipped preset: digits, mnist, vit_pretrain, vit_finetune "
                        f"(default {default_config})")
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
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--workers", type=int, help="data-loading worker processes")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass: less memory, ~30%% more compute")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard parameters, gradients and optimizer state across processes (FSDP)")
    p.add_argument("--compile", action="store_true",
                   help="compile the training forward and backward (torch.compile): 1.25x faster steps for the "
                        "MNIST model on a 2-core CPU, nothing at 224 px; the first step waits 30-60 s for the compiler")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.set_defaults(default_config=default_config)


def _convert(args: argparse.Namespace) -> None:
    from .interop import load_model, save_model

    model = load_model(args.src)
    dst = save_model(model, args.dst, args.to, getattr(model, "pretrained_cfg", {}))
    print(f"{args.src} ({model.pretrained_cfg['format']}) -> {dst} ({args.to})")


def _explain(args: argparse.Namespace) -> int:
    from .analysis import explain

    results = explain(args.checkpoint, args.images, args.out, args.top_k, args.device)
    for r in results:
        if "error" in r:
            print(f"vitkit explain: error: {r['error']}", file=sys.stderr)
        else:
            top = ", ".join(f"{t['class']} {t['prob']:.4f}" for t in r["top"])
            print(f"{r['image']}: {top} -> {r['rollout_png']}")
    return 1 if any("error" in r for r in results) else 0


def _analyze(args: argparse.Namespace) -> None:
    from .analysis import analyze

    r = analyze(args.checkpoint, args.data, args.out, args.num_images, device=args.device)
    print("mean attention distance per layer (pixels): "
          + ", ".join(f"{v:.2f}" for v in r["per_layer_mean_distance"]))
    ps = r["position_similarity"]
    if "skipped" not in ps:
        print("position-embedding similarity: " + ", ".join(f"{k} {v:.3f}" for k, v in ps.items()))
    print(f"wrote {args.out}/report.html")


def _checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="SRC",
                   help="a run folder (its best checkpoint), weights in any format vitkit reads, or (eval, "
                        "predict) a file written by `vitkit export`")


def _compile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="compile the model with frozen weights first (torch.compile): faster per image, but the "
                        "first batch of each size waits 10-30 s for the compiler; pays on thousands of images")


def _fewshot(args: argparse.Namespace) -> None:
    import json

    from .evaluate.fewshot import fewshot_eval, format_fewshot

    try:
        shots = [int(s) for s in args.shots.split(",")]
    except ValueError:
        raise VitkitError(f"--shots expects comma-separated integers, got '{args.shots}'") from None
    r = fewshot_eval(args.checkpoint, args.data, shots, args.draws, args.l2, args.seed, args.max_test, args.out)
    print(json.dumps(r, indent=2) if args.json else format_fewshot(r))


def _experiment(args: argparse.Namespace) -> None:
    from .experiments import data_scaling

    def ints(flag: str, text: str) -> list[int]:
        try:
            return [int(v.replace("_", "")) for v in text.split(",")]
        except ValueError:
            raise VitkitError(f"--{flag} expects comma-separated integers, got '{text}'") from None

    r = data_scaling(args.data, ints("sizes", args.sizes), args.models.split(","), args.out, args.images_seen,
                     args.config, ints("seeds", args.seeds), args.set, progress=False if args.no_progress else None)
    from .experiments.data_scaling import markdown

    print(markdown(r))
    print(f"wrote {args.out}/data_scaling.json, .md and .png")


def _device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")


def _cost(args: argparse.Namespace) -> None:
    import json

    from .cost import cost_table, format_table, plot_costs, to_dicts

    try:
        sizes = [int(v) for v in args.img_size.split(",") if v.strip()]
    except ValueError:
        raise VitkitError(f"--img-size takes comma-separated integers, got '{args.img_size}'") from None
    rows = cost_table(args.model, sizes, latency=not args.no_latency)
    print(json.dumps(to_dicts(rows), indent=2) if args.json else format_table(rows))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cost.json").write_text(json.dumps({"model": args.model, "rows": to_dicts(rows)}, indent=2))
        plot_costs(rows, out / "cost.png", f"{args.model}: forward cost per image")
        print(f"wrote {out}/cost.json and {out}/cost.png")


def _export(args: argparse.Namespace) -> None:
    from .export import export_int8, export_onnx

    check = not args.no_check
    if args.format == "onnx":
        r = export_onnx(args.checkpoint, args.out, args.opset, check=check, dynamic_size=args.dynamic_size)
    else:
        r = export_int8(args.checkpoint, args.out, args.opset, check=check, fuse=args.fuse,
                        dynamic_size=args.dynamic_size)
    sizes = ", ".join(f"{h}x{w}" for h, w in r.get("checked_sizes", []))
    diff = f"; onnxruntime vs PyTorch max |diff| {r['max_abs_diff']:.2e} at {sizes}" if "max_abs_diff" in r else ""
    if "top1_agreement" in r:
        diff += f", top-1 agreement {100 * r['top1_agreement']:.1f}% on random input"
    print(f"wrote {r['path']} (input {'x'.join(str(v) for v in r['input'])}, opset {r['opset']}){diff}")
    if args.data:  # what the file costs in accuracy, on real images with the checkpoint's own preprocessing
        from .evaluate import evaluate_checkpoint
        before = evaluate_checkpoint(args.checkpoint, args.data, args.split)["top1"]
        after = evaluate_checkpoint(args.out, args.data, args.split)["top1"]
        print(f"{args.data} [{args.split}] top-1: checkpoint {100 * before:.2f}% -> {Path(args.out).name} "
              f"{100 * after:.2f}% ({100 * (after - before):+.2f} points)")


def _data_pack(args: argparse.Namespace) -> None:
    from .data.pack import pack

    index = pack(args.data, args.out, args.shard_size, args.val_fraction, args.test_fraction, args.seed,
                 args.download, progress=sys.stderr.isatty())
    for name, info in index["splits"].items():
        print(f"{name}: {sum(info['counts']):,} samples in {len(info['counts'])} shards -> {args.out}/{info['pattern']}")
    if index["skipped"]:
        print(f"left out {len(index['skipped'])} unreadable images, e.g. {index['skipped'][0]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit",
        description="Vision Transformers (Dosovitskiy et al.): train, load, inspect and deploy.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered models with parameter counts and input sizes",
                       description="List registered models: name, parameter count (1000 classes unless the "
                                   "preset says otherwise) and input size (channels x height x width).")
    p.add_argument("--filter", default="*", metavar="PATTERN",
                   help="shell-style pattern or substring, e.g. 'patch16' or 'vit_base_*' (default: all)")
    p.set_defaults(func=_models)

    p = sub.add_parser(
        "train", help="train a model (default: the small ViT on the built-in 8x8 digits)",
        description="Train a model into a run folder (config.yaml, metrics.jsonl, checkpoints/, curves.png, "
                    "summary.json). Settings come from a preset or YAML file, then --set overrides, then the "
                    "flags below. Ctrl-C stops after the current step and saves a resumable checkpoint.")
    _run_flags(p, default_config="digits")
    p.add_argument("--model", metavar="NAME", help="registered model name (see `vitkit models`)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=_train, init=None, img_size=None, keep_head=False)

    p = sub.add_parser(
        "finetune", help="fine-tune pretrained weights on new data (paper 3.2 / B.1.1)",
        description="Load weights (any format vitkit reads), resample the position embeddings to --img-size, "
                    "replace the head (and pre-logits layer) by a zero-initialised linear layer for the new "
                    "classes, and train with the paper's fine-tuning recipe (preset vit_finetune: SGD momentum "
                    "0.9, no weight decay, warm-up + cosine, clipping at 1) unless --config says otherwise.")
    p.add_argument("--init", required=True, metavar="SRC",
                   help="weights to start from: .npz, timm/HF file or folder, vitkit run or .safetensors, Hub name")
    _run_flags(p, default_config="vit_finetune")
    p.add_argument("--img-size", type=int, metavar="N", help="fine-tuning resolution (default: the weights' own)")
    p.add_argument("--resample", choices=["official", "bilinear", "bicubic"],
                   help="position-embedding resampling (default: the source's own; official for .npz)")
    p.add_argument("--keep-head", action="store_true", help="keep the old head when the classes match")
    p.set_defaults(func=_train, model=None, resume=None)

    p = sub.add_parser(
        "pretrain", help="self-supervised pre-training: masked patch prediction (paper B.1.2)",
        description="Pre-train a ViT without labels: 50%% of the patch embeddings are corrupted (80%% [mask] "
                    "embedding, 10%% another patch, 10%% unchanged) and the model predicts each corrupted patch's "
                    "mean colour at 3 bits per channel. The run folder's checkpoints hold the encoder alone: "
                    "`vitkit finetune --init RUN_DIR` starts from it. Same flags and run folder as train.")
    p.add_argument("--objective", default="mpp", choices=["mpp"], help="the pre-training objective (default mpp)")
    _run_flags(p, default_config="mpp")
    p.add_argument("--model", metavar="NAME", help="registered ViT name (see `vitkit models`)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=_train, init=None, img_size=None, keep_head=False)

    p = sub.add_parser("convert", help="convert weights between vitkit, timm, Hugging Face and official .npz",
                       description="Read weights in any supported format and write them in another; the model "
                                   "is rebuilt from the tensors and must give the same logits.")
    p.add_argument("src", metavar="SRC", help="weights file, folder or Hub name")
    p.add_argument("dst", metavar="DST", help="output file (.safetensors, .pth, .npz) or folder (hf)")
    p.add_argument("--to", required=True, choices=["vitkit", "timm", "hf", "npz"], help="output format")
    p.set_defaults(func=_convert)

    p = sub.add_parser("explain", help="attention-rollout maps and per-head attention for images",
                       description="For each image: attention rollout (Abnar & Zuidema, as in the paper) drawn over "
                                   "the image at its original size, the raw map (.npy), the last layer's attention "
                                   "per head, and the top-k prediction (explain.json).")
    _checkpoint_flag(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--top-k", type=int, default=5, help="classes to report per image (default 5)")
    _device_flag(p)
    p.set_defaults(func=_explain)

    p = sub.add_parser("analyze", help="the paper's Figure 7: attention distance, position similarity, filters",
                       description="Mean attention distance per head and layer over --num-images test images, "
                                   "position-embedding similarity, and the principal components of the patch-"
                                   "embedding filters: PNG + JSON each, and a self-contained report.html.")
    _checkpoint_flag(p)
    p.add_argument("--data", required=True, metavar="SPEC", help="data spec, as for train (its test split is used)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--num-images", type=int, default=128, help="images for the attention distance (default 128)")
    _device_flag(p)
    p.set_defaults(func=_analyze)

    p = sub.add_parser("eval", help="accuracy of a checkpoint on a dataset (top-1/5, per class, confusion matrix)",
                       description="Evaluate a checkpoint with the preprocessing stored in it.")
    _checkpoint_flag(p)
    p.add_argument("--data", required=True, metavar="SPEC", help="data spec, as for train")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split (default test)")
    p.add_argument("--out", metavar="DIR", help="write eval.json and confusion.png here")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    _device_flag(p)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _compile_flag(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("fewshot", help="few-shot linear evaluation of frozen features (closed-form ridge)",
                       description="Encode images with the checkpoint's frozen pre-logit features, fit a "
                                   "regularised least-squares classifier onto {-1,1} targets from k random "
                                   "training images per class (features whitened on those, plus a bias feature; "
                                   "as big_vision's few-shot evaluator), and report test accuracy: mean and spread "
                                   "over several draws, for every k.")
    _checkpoint_flag(p)
    p.add_argument("--data", required=True, metavar="SPEC", help="data spec, as for train (train split: the "
                   "k-shot pool; test split: the evaluation)")
    p.add_argument("--shots", default="1,5,10,25", metavar="K,K,...", help="images per class (default 1,5,10,25)")
    p.add_argument("--draws", type=int, default=5, help="random k-shot sets per k (default 5)")
    p.add_argument("--l2", type=float, default=1024.0, help="ridge strength (default 2^10, big_vision's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws and of the data split")
    p.add_argument("--max-test", type=int, default=0, metavar="N", help="evaluate on N random test images "
                   "(default 0: all)")
    p.add_argument("--out", metavar="DIR", help="also write fewshot.json here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_fewshot)

    p = sub.add_parser("experiment", help="the paper's experiments: data-scaling (ViT vs ResNet as data grows)",
                       description="Run one of the paper's experiments as a resumable sweep of ordinary runs.")
    exp_sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    e = exp_sub.add_parser("data-scaling", help="test accuracy against training-set size, for each model",
                           description="Train every model on stratified subsets of the training data of each size "
                                       "(same recipe, same number of images seen: smaller sets get more epochs), "
                                       "evaluate on the same test set, and write a table (markdown + JSON) and a "
                                       "plot of accuracy against size (log x). Finished cells are kept: running "
                                       "the same command again resumes the sweep.")
    e.add_argument("--data", required=True, metavar="SPEC", help="data spec, as for train")
    e.add_argument("--sizes", default="1000,5000,20000,60000", metavar="N,N,...",
                   help="labelled training-set sizes, validation share included (default 1000,5000,20000,60000)")
    e.add_argument("--models", default="vit_mnist_patch7_28,resnet_bit_mnist", metavar="NAME,NAME,...",
                   help="registered models to compare (default vit_mnist_patch7_28,resnet_bit_mnist)")
    e.add_argument("--images-seen", type=int, default=300_000, metavar="N",
                   help="the budget: training images seen by every run (default 300000)")
    e.add_argument("--config", default="mnist", metavar="PRESET_OR_YAML", help="the recipe (default mnist)")
    e.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="recipe overrides")
    e.add_argument("--seeds", default="0", metavar="S,S,...", help="seeds per cell (default 0)")
    e.add_argument("--out", required=True, metavar="DIR", help="sweep folder (cells/, data_scaling.json/.md/.png)")
    e.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    e.set_defaults(func=_experiment)

    p = sub.add_parser("cost", help="tokens, attention entries, FLOPs by part and latency per resolution",
                       description="How a ViT's cost grows with resolution: tokens, attention-matrix entries, "
                                   "forward FLOPs split into patch embedding / attention (and its quadratic "
                                   "T x T part) / MLP, the attention matrix's memory, and, measured, the "
                                   "activation memory a training forward keeps per image and the batch-1 "
                                   "CPU latency. FLOPs count a multiply-add as 2.")
    p.add_argument("--model", required=True, metavar="NAME", help="registered ViT name (see `vitkit models`)")
    p.add_argument("--img-size", default="128,224,384,512", metavar="N,N,...",
                   help="comma-separated resolutions, multiples of the patch size (default 128,224,384,512)")
    p.add_argument("--no-latency", action="store_true",
                   help="skip the measurements (latency, activation memory): closed form only")
    p.add_argument("--out", metavar="DIR", help="also write cost.json and a log-log plot cost.png here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_cost)

    p = sub.add_parser("export", help="write a deployment file (ONNX, fp32 or int8) and check it against PyTorch",
                       description="Export a checkpoint (any weights format vitkit reads) to ONNX with a dynamic "
                                   "batch dimension at the checkpoint's image size (any size with --dynamic-size), "
                                   "then run it in onnxruntime "
                                   "and compare the logits with PyTorch's (onnx: fails above 1e-4). The file "
                                   "carries the preprocessing and classes: `vitkit eval/predict --checkpoint "
                                   "FILE.onnx` run it.")
    _checkpoint_flag(p)
    p.add_argument("--format", default="onnx", choices=["onnx", "int8"],
                   help="onnx: fp32; int8: dynamic int8 quantisation of every matrix multiply (per-channel "
                        "weights) for CPU inference with onnxruntime")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, e.g. model.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--dynamic-size", action="store_true",
                   help="free height and width too (multiples of the patch size; the position table is "
                        "resampled in 2D inside the file); checked at the checkpoint's size and a larger one. "
                        "Not for models resampled with antialiasing")
    p.add_argument("--data", metavar="SPEC",
                   help="also evaluate the checkpoint and the written file on this data (as `vitkit eval`) and "
                        "print both top-1 accuracies: what the export costs, int8 above all")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split for --data (default test)")
    p.add_argument("--fuse", default="attention", choices=["attention", "none"],
                   help="int8 only: attention (default, faster here) = onnxruntime's fused int8 attention "
                        "kernel (QAttention); none = plain ONNX operators")
    p.set_defaults(func=_export)

    p = sub.add_parser("data", help="data tools: pack a dataset into WebDataset tar shards",
                       description="Data tools. `vitkit data pack` writes train/val/test shards (split exactly as "
                                   "`vitkit train` splits the spec) for streaming with --data shards:PATTERN.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser("pack", help="write WebDataset tar shards (KEY.png, KEY.cls, KEY.json) and index.json",
                            description="Read a data spec and write OUT/{train,val,test}-NNNNNN.tar with up to "
                                        "--shard-size samples each (PNG image, integer label, JSON with the class "
                                        "name and source file), plus OUT/index.json (classes, per-shard counts). "
                                        "Train on them with --data 'shards:OUT/train-{000000..000NNN}.tar'.")
    q.add_argument("--data", required=True, metavar="SPEC", help="data spec, as for train")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder (must not hold shards already)")
    q.add_argument("--shard-size", type=int, default=10_000, metavar="N", help="samples per shard (default 10000)")
    q.add_argument("--val-fraction", type=float, default=0.1,
                   help="held out of train for validation when the source has no val split (default 0.1)")
    q.add_argument("--test-fraction", type=float, default=0.2,
                   help="held out for testing when the source has no test split (default 0.2)")
    q.add_argument("--seed", type=int, default=0, help="seed of the val split (use the training seed; default 0)")
    q.add_argument("--download", action="store_true", help="fetch the dataset first (mnist, cifar10, cifar100)")
    p.set_defaults(func=_data_pack)

    p = sub.add_parser("predict", help="top-k classes of image files",
                       description="Predict classes of image files with the checkpoint's own preprocessing "
                                   "(size, channels, mean/std). Unreadable files are reported by name; the "
                                   "others are still predicted (exit status 1 if any failed).")
    _checkpoint_flag(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _device_flag(p)
    _compile_flag(p)
    p.set_defaults(func=_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    tune_allocator()  # fixed malloc thresholds: 1.06-1.22x on CPU (vitkit/runtime.py, benchmarks/allocator.py)
    try:
        return int(args.func(args) or 0)
    except (VitkitError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        if args.debug:
            raise
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
