"""Two ways of running the same vitkit model, round-robin in one process: the measurements behind the
speed choices the README lists as kept.

    python benchmarks/variants.py --study attention --models mnist,s16 --rounds 6
    python benchmarks/variants.py --study train_compile --models mnist,s16 --rounds 5
    python benchmarks/variants.py --study wrapper --models mnist --modes infer_b1,infer_b32,train_b32 --rounds 8

Studies (the second variant's speed over the first's, per round; median and range printed):
- `attention`: the fused attention kernel against plain matrix products, in a training step (batch 32,
  forward + backward + AdamW; vitkit's choice up to EXPLICIT_ATTENTION_MAX_TOKENS_TRAIN tokens) or in
  inference (up to EXPLICIT_ATTENTION_MAX_TOKENS);
- `train_compile`: the training step eager against `train.compile`;
- `wrapper`: compiled code calling its kernels from Python against inductor's C++ wrapper (vitkit's).
`--img-size` changes the token count (e.g. `--models s16 --img-size 112` for 50 tokens).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch import nn

import vitkit.models.vit as vit
from common import MODES, Cell, model_name, time_cell
from vitkit.config import OptimConfig
from vitkit.models import create_model
from vitkit.runtime import tune_allocator
from vitkit.train.optim import build_optimizer

Variant = Callable[[nn.Module, bool], tuple[nn.Module, Callable[[], None]]]  # (model, inference) -> (module to run, setup per step)


def plain(model: nn.Module, inference: bool) -> tuple[nn.Module, Callable[[], None]]:
    return model, lambda: None


def attention_limit(tokens: int) -> Variant:
    def variant(model: nn.Module, inference: bool):
        limit = "EXPLICIT_ATTENTION_MAX_TOKENS" if inference else "EXPLICIT_ATTENTION_MAX_TOKENS_TRAIN"
        return model, lambda: setattr(vit, limit, tokens)
    return variant


def compiled_with(cpp_wrapper: bool) -> Variant:
    """As vitkit.models.compiled does it (frozen weights for inference), with or without the C++ wrapper."""
    def variant(model: nn.Module, inference: bool):
        return torch.compile(model, dynamic=False, options={"cpp_wrapper": cpp_wrapper, "freezing": inference}), lambda: None
    return variant


STUDIES: dict[str, tuple[tuple[str, Variant], tuple[str, Variant]]] = {
    "attention": (("fused kernel", attention_limit(0)), ("plain products", attention_limit(10_000))),
    "train_compile": (("eager", plain), ("compiled", compiled_with(True))),
    "wrapper": (("python wrapper", compiled_with(False)), ("c++ wrapper", compiled_with(True))),
}


def make_cell(name: str, img_size: int | None, mode: str, variant: Variant) -> Cell:
    train, batch = MODES[mode]
    torch.manual_seed(0)
    model = create_model(name, **({"img_size": img_size} if img_size else {}))
    x = torch.randn(batch, model.cfg.in_chans, *model.cfg.img_size)
    if not train:
        model.eval().requires_grad_(False)
        net, setup = variant(model, True)

        def infer() -> None:
            setup()
            with torch.inference_mode():
                net(x)
        infer()  # compilation, outside the timing
        return Cell(infer, batch)
    y = torch.randint(0, model.cfg.num_classes, (batch,))
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-4, weight_decay=0.0))
    net, setup = variant(model, False)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        setup()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
    step()  # compilation, outside the timing
    return Cell(step, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", required=True, choices=sorted(STUDIES), help="which pair of variants")
    ap.add_argument("--models", default="mnist", help="comma-separated: mnist, ti16, s16, b16 or registered names")
    ap.add_argument("--img-size", type=int, help="input size instead of the model's own (changes the tokens)")
    ap.add_argument("--modes", default="train_b32", help="comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--rounds", type=int, default=6, help="round-robin rounds")
    ap.add_argument("--min-seconds", type=float, default=1.5, help="timing per variant per round")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args()
    tune_allocator()  # as every vitkit command does
    torch.set_num_threads(args.threads)
    (first, v1), (second, v2) = STUDIES[args.study]
    for key in args.models.split(","):
        name = model_name(key)
        for mode in args.modes.split(","):
            cells = [make_cell(name, args.img_size, mode, v) for v in (v1, v2)]
            ratios, speeds = [], []
            for r in range(args.rounds):
                order = cells if r % 2 == 0 else cells[::-1]
                got = {id(c): time_cell(c, args.min_seconds) for c in order}
                speeds.append(got[id(cells[0])])
                ratios.append(got[id(cells[1])] / got[id(cells[0])])
            print(f"{name} {args.img_size or ''} {mode}: {second} / {first} = {statistics.median(ratios):.3f} "
                  f"({min(ratios):.3f}-{max(ratios):.3f}) over {args.rounds} rounds; {first} "
                  f"{statistics.median(speeds):.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
