"""`vitkit experiment`: the paper's experiments as resumable sweeps of ordinary runs."""

from __future__ import annotations

import argparse

from .common import data_flag, int_list


def _data_scaling(args: argparse.Namespace) -> None:
    from ..experiments import data_scaling
    from ..experiments.data_scaling import markdown

    r = data_scaling(args.data, int_list("sizes", args.sizes), args.models.split(","), args.out, args.images_seen,
                     args.config, int_list("seeds", args.seeds), args.set,
                     progress=False if args.no_progress else None)
    print(markdown(r))
    print(f"wrote {args.out}/data_scaling.json, .md and .png")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="the paper's experiments: data-scaling (ViT vs ResNet as data grows)",
                       description="Run one of the paper's experiments as a resumable sweep of ordinary runs.")
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    e = experiments.add_parser("data-scaling", help="test accuracy against training-set size, for each model",
                               description="Train every model on stratified subsets of the training data of each "
                                           "size (same recipe, same number of images seen: smaller sets get more "
                                           "epochs), evaluate on the same test set, and write a table (markdown + "
                                           "JSON) and a plot of accuracy against size (log x). Finished cells are "
                                           "kept: running the same command again resumes the sweep.")
    data_flag(e)
    e.add_argument("--sizes", default="1000,5000,20000,60000", metavar="N,N,...",
                   help="labelled training-set sizes, validation share included (default 1000,5000,20000,60000)")
    e.add_argument("--models", default="vit_mnist_patch7_28,resnet_bit_mnist", metavar="NAME,NAME,...",
                   help="registered models to compare (default vit_mnist_patch7_28,resnet_bit_mnist)")
    e.add_argument("--images-seen", type=int, default=300_000, metavar="N",
                   help="the budget: training images seen by every run (default 300000)")
    e.add_argument("--config", default="mnist", metavar="PRESET_OR_YAML", help="the recipe (default mnist)")
    e.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="recipe overrides, as for train (repeatable)")
    e.add_argument("--seeds", default="0", metavar="S,S,...", help="seeds per cell (default 0)")
    e.add_argument("--out", required=True, metavar="DIR", help="sweep folder (cells/, data_scaling.json/.md/.png)")
    e.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    e.set_defaults(func=_data_scaling)
