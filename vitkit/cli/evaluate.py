"""`vitkit eval` (accuracy on a split) and `vitkit fewshot` (linear few-shot evaluation)."""

from __future__ import annotations

import argparse
import json

from .common import checkpoint_flag, compile_flag, data_flag, device_flag, int_list, precision_flag, runtime_flag


def _eval(args: argparse.Namespace) -> None:
    from ..evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.out, args.batch_size, args.device,
                            args.workers, compile=args.compile, precision=args.precision, runtime=args.runtime)
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "confusion"}, indent=2))
        return
    print(f"{r['checkpoint']} on {r['data']} [{r['split']}]: {r['count']} images")
    print(f"top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  loss {r['loss']:.4f}  "
          f"(precision {r['precision']}: {r['precision_reason']}; runtime {r['runtime']}: {r['runtime_reason']})")
    print("per class: " + ", ".join(f"{c} {a:.3f}" for c, a in r["per_class"].items()))
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} unreadable file(s): {', '.join(r['skipped'][:5])}")
    if args.out:
        print(f"wrote {args.out}/eval.json and {args.out}/confusion.png")


def _fewshot(args: argparse.Namespace) -> None:
    from ..evaluate.fewshot import fewshot_eval, format_fewshot

    r = fewshot_eval(args.checkpoint, args.data, int_list("shots", args.shots), args.draws, args.l2, args.seed,
                     args.max_test, args.out)
    print(json.dumps(r, indent=2) if args.json else format_fewshot(r))


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of a checkpoint on a dataset (top-1/5, per class, confusion matrix)",
                       description="Evaluate a checkpoint with the preprocessing stored in it.")
    checkpoint_flag(p)
    data_flag(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split (default test)")
    p.add_argument("--out", metavar="DIR", help="write eval.json and confusion.png here")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    device_flag(p)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    compile_flag(p)
    precision_flag(p)
    runtime_flag(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("fewshot", help="few-shot linear evaluation of frozen features (closed-form ridge)",
                       description="Encode images with the checkpoint's frozen pre-logit features, fit a "
                                   "regularised least-squares classifier onto {-1,1} targets from k random "
                                   "training images per class (features whitened on those, plus a bias feature; "
                                   "as big_vision's few-shot evaluator), and report test accuracy: mean and spread "
                                   "over several draws, for every k.")
    checkpoint_flag(p)
    data_flag(p, what=" (train split: the k-shot pool; test split: the evaluation)")
    p.add_argument("--shots", default="1,5,10,25", metavar="K,K,...", help="images per class (default 1,5,10,25)")
    p.add_argument("--draws", type=int, default=5, help="random k-shot sets per k (default 5)")
    p.add_argument("--l2", type=float, default=1024.0, help="ridge strength (default 2^10, big_vision's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws and of the data split")
    p.add_argument("--max-test", type=int, default=0, metavar="N", help="evaluate on N random test images "
                   "(default 0: all)")
    p.add_argument("--out", metavar="DIR", help="also write fewshot.json here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_fewshot)
