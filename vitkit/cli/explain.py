"""`vitkit explain` (attention rollout per image) and `vitkit analyze` (the paper's Figure 7)."""

from __future__ import annotations

import argparse
import sys

from .common import checkpoint_flag, data_flag, device_flag, images_flag, precision_flag


def _explain(args: argparse.Namespace) -> int:
    from ..analysis import explain

    results = explain(args.checkpoint, args.images, args.out, args.top_k, args.device, args.precision)
    for r in results:
        if "error" in r:
            print(f"vitkit explain: error: {r['error']}", file=sys.stderr)
        else:
            top = ", ".join(f"{t['class']} {t['prob']:.4f}" for t in r["top"])
            print(f"{r['image']}: {top} -> {r['rollout_png']}")
    return 1 if any("error" in r for r in results) else 0


def _analyze(args: argparse.Namespace) -> None:
    from ..analysis import analyze

    r = analyze(args.checkpoint, args.data, args.out, args.num_images, device=args.device, precision=args.precision)
    print("mean attention distance per layer (pixels): "
          + ", ".join(f"{v:.2f}" for v in r["per_layer_mean_distance"]))
    ps = r["position_similarity"]
    if "skipped" not in ps:
        print("position-embedding similarity: " + ", ".join(f"{k} {v:.3f}" for k, v in ps.items()))
    print(f"wrote {args.out}/report.html")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="attention-rollout maps and per-head attention for images",
                       description="For each image: attention rollout (Abnar & Zuidema, as in the paper) drawn over "
                                   "the image at its original size, the raw map (.npy), the last layer's attention "
                                   "per head, and the top-k prediction (explain.json).")
    checkpoint_flag(p)
    images_flag(p, "to explain")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the overlays, maps and explain.json")
    device_flag(p)
    precision_flag(p)
    p.set_defaults(func=_explain)

    p = sub.add_parser("analyze", help="the paper's Figure 7: attention distance, position similarity, filters",
                       description="Mean attention distance per head and layer over --num-images test images, "
                                   "position-embedding similarity, and the principal components of the patch-"
                                   "embedding filters: PNG + JSON each, and a self-contained report.html.")
    checkpoint_flag(p)
    data_flag(p, what=" (its test split is used)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG/JSON panels and report.html")
    p.add_argument("--num-images", type=int, default=128, help="images for the attention distance (default 128)")
    device_flag(p)
    precision_flag(p)
    p.set_defaults(func=_analyze)
