"""Few-shot linear evaluation, as the paper reports it (section 4, "few-shot accuracy"): frozen pre-logit
features, a closed-form regularised least-squares fit onto {-1, 1} targets, accuracy on the test set.

Follows big_vision's few-shot evaluator: the features are whitened with the k-shot set's own mean and
standard deviation, a constant feature of 100 stands in for the bias (so it is almost unregularised),
and the ridge strength defaults to 2^10. Several random draws of the k-shot set give a mean and spread.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import AugConfig, DataConfig
from ..data.datasets import ImageDataset, build_data, make_loader
from .. import rng
from ..errors import VitkitError
from ..load import load

DEFAULT_L2 = 2.0 ** 10
BIAS_FEATURE = 100.0


def ridge_fit(x: Tensor, y: Tensor, num_classes: int, l2: float = DEFAULT_L2) -> dict[str, Tensor]:
    """W minimising |X W - Y|^2 + l2 |W|^2 for whitened X with a bias column and Y = 2 onehot(y) - 1.
    Solved in whichever of the two equivalent forms has the smaller system (N >= D or D > N)."""
    x = x.double()
    mean, std = x.mean(0, keepdim=True), x.std(0, unbiased=False, keepdim=True) + 1e-5
    xw = _with_bias((x - mean) / std)
    t = 2.0 * torch.nn.functional.one_hot(y.long(), num_classes).double() - 1.0
    n, d = xw.shape
    if n >= d:
        w = torch.linalg.solve(xw.T @ xw + l2 * torch.eye(d, dtype=xw.dtype), xw.T @ t)
    else:
        w = xw.T @ torch.linalg.solve(xw @ xw.T + l2 * torch.eye(n, dtype=xw.dtype), t)
    return {"w": w, "mean": mean, "std": std}


def ridge_predict(fit: dict[str, Tensor], x: Tensor) -> Tensor:
    return (_with_bias((x.double() - fit["mean"]) / fit["std"]) @ fit["w"]).argmax(1)


def _with_bias(x: Tensor) -> Tensor:
    return torch.cat([x, torch.full((x.shape[0], 1), BIAS_FEATURE, dtype=x.dtype)], dim=1)


@torch.inference_mode()
def features(model: nn.Module, ds: ImageDataset, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Pre-logit features (what the head sees) and labels of every image in `ds`."""
    if not hasattr(model, "forward_head"):
        raise VitkitError(f"few-shot evaluation needs a PyTorch model with pre-logit features, "
                          f"not {type(model).__name__}")
    feats, labels = [], []
    for batch in make_loader(ds, batch_size, 0):
        if batch["x"] is None:
            continue
        feats.append(model.forward_head(model.forward_features(batch["x"]), pre_logits=True).float())
        labels.append(batch["y"])
    if not feats:
        raise VitkitError("few-shot: no readable images")
    return torch.cat(feats), torch.cat(labels)


def draw_indices(labels: np.ndarray, shots: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """`shots` random training images of every class."""
    picks = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots:
            raise VitkitError(f"few-shot: class {c} has {len(pool)} training images, fewer than {shots} shots")
        picks.append(rng.choice(pool, shots, replace=False))
    return np.concatenate(picks)


def fewshot_eval(checkpoint: str | Path, data: str, shots: list[int], draws: int = 5, l2: float = DEFAULT_L2,
                 seed: int = 0, max_test: int = 0, out: str | Path | None = None) -> dict[str, Any]:
    """Mean and spread over `draws` random k-shot training sets of the test accuracy, for every k."""
    if not shots or min(shots) < 1:
        raise VitkitError(f"--shots must be positive integers, got {shots}")
    if draws < 1 or l2 <= 0:
        raise VitkitError(f"few-shot needs draws >= 1 and l2 > 0 (got draws={draws}, l2={l2})")
    loaded = load(checkpoint)
    model, pre = loaded.model, loaded.preprocess
    bundle = build_data(DataConfig(spec=data), AugConfig(), pre.img_size, pre.in_chans, seed)
    if bundle.stream is not None or bundle.test is None:
        raise VitkitError(f"few-shot needs an indexed dataset with a test split; {data} has none")
    k = bundle.num_classes
    train_labels = bundle.train.split.labels.numpy()
    draws_idx = {(s, r): draw_indices(train_labels, s, k, rng.numpy_rng(seed, "fewshot", s, r))
                 for s in shots for r in range(draws)}
    needed = np.unique(np.concatenate(list(draws_idx.values())))       # only these training images are encoded
    x_pool, y_pool = features(model, ImageDataset(bundle.train.split.subset(torch.from_numpy(needed)), pre,
                                                  strict=False))
    where = {int(i): j for j, i in enumerate(needed)}
    test_split = bundle.test.split
    if max_test and len(test_split) > max_test:
        test_split = test_split.subset(torch.from_numpy(
            rng.numpy_rng(seed, "fewshot_test").choice(len(test_split), max_test, replace=False)))
    x_test, y_test = features(model, ImageDataset(test_split, pre, strict=False))
    rows = []
    for s in shots:
        accs = []
        for r in range(draws):
            pick = torch.tensor([where[int(i)] for i in draws_idx[(s, r)]])
            fit = ridge_fit(x_pool[pick], y_pool[pick], k, l2)
            accs.append(float((ridge_predict(fit, x_test) == y_test).double().mean()))
        rows.append({"shots": s, "mean": statistics.mean(accs), "std": statistics.pstdev(accs),
                     "min": min(accs), "max": max(accs), "accuracies": accs})
    result = {"checkpoint": str(checkpoint), "data": data, "classes": k, "draws": draws, "l2": l2,
              "feature_dim": int(x_pool.shape[1]), "test_images": int(len(y_test)), "rows": rows}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fewshot.json").write_text(json.dumps(result, indent=2))
    return result


def format_fewshot(result: dict[str, Any]) -> str:
    lines = [f"few-shot linear evaluation of {result['checkpoint']} on {result['data']} "
             f"({result['classes']} classes, {result['draws']} draws, l2 {result['l2']:g}, "
             f"{result['test_images']} test images)", "| shots | accuracy (mean ± std) | min | max |",
             "|---:|---|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['shots']} | {100 * r['mean']:.2f}% ± {100 * r['std']:.2f} | {100 * r['min']:.2f}% | "
                     f"{100 * r['max']:.2f}% |")
    return "\n".join(lines)
