"""The paper's inductive-bias finding as an experiment (section 4.2, Figures 3-4): train a ViT and a
ResNet on growing subsets of the same training data and compare test accuracy. The paper sees the
ResNet ahead on small data and the ViT catching up (and passing it) as the data grows.

Every cell (model x training-set size x seed) is an ordinary run folder under OUT/cells/, trained with
the same recipe and the same budget rule: the same number of training images seen (so a smaller set is
repeated for more epochs). A finished cell is never redone; an interrupted one resumes from its last
checkpoint; so the whole sweep can be stopped and started again.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from ..files import atomic_write
from ..run_dir import RunDir
from ..config import build_config
from ..errors import VitkitError
from ..plotting import pyplot, save


def epochs_for(size: int, images_seen: int, val_fraction: float) -> int:
    """The budget rule: enough epochs over `size` images (less the validation share) to see `images_seen`."""
    train_images = max(1, round(size * (1 - val_fraction)))
    return max(1, math.ceil(images_seen / train_images))


def run_cell(run_dir: Path, config: str, overrides: list[str], epochs: int, progress: bool | None) -> tuple[dict, str]:
    """Train one cell, resume it, or return its finished summary; also says which of the three happened."""
    from ..train import train

    run = RunDir(run_dir)
    summary_file = run.summary
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        if summary.get("status") == "completed":
            if summary.get("epochs") != epochs:
                raise VitkitError(f"{run_dir} was trained for {summary.get('epochs')} epochs, this sweep asks for "
                                  f"{epochs}: use another --out for a different budget")
            return summary, "finished earlier, reused"
    if run.is_resumable():
        return train(resume=run_dir, progress=progress), "resumed"
    return train(build_config(config, overrides + [f"train.out={run_dir}"]), progress=progress), "trained"


def data_scaling(data: str, sizes: list[int], models: list[str], out: str | Path, images_seen: int,
                 config: str = "mnist", seeds: list[int] | None = None, overrides: list[str] | None = None,
                 progress: bool | None = False, say=print) -> dict[str, Any]:
    """Train every (model, size, seed) cell, then write OUT/data_scaling.json, .md and .png."""
    if not sizes or min(sizes) < 1 or not models:
        raise VitkitError(f"data-scaling needs positive --sizes and at least one model (got {sizes}, {models})")
    seeds = seeds or [0]
    out = Path(out)
    base = build_config(config, list(overrides or []) + [f"data.spec={data}"])  # validates the recipe once
    for m in models:  # a mistyped model name fails before any training
        build_config(config, list(overrides or []) + [f"data.spec={data}", f"model.name={m}"])
    cells = []
    total = len(models) * len(sizes) * len(seeds)
    for m in models:
        for size in sizes:
            for seed in seeds:
                run_dir = out / "cells" / f"{m}-n{size}-s{seed}"
                epochs = epochs_for(size, images_seen, base.data.val_fraction)
                s, how = run_cell(run_dir, config, list(overrides or []) + [
                    f"data.spec={data}", f"model.name={m}", f"data.limit_train={size}", f"train.epochs={epochs}",
                    f"train.seed={seed}", "train.tensorboard=false"], epochs, progress)
                say(f"[{len(cells) + 1}/{total}] {m}, {size:,} images, seed {seed}, {epochs} epochs: {how}; "
                    f"test accuracy {100 * s.get('test_acc', float('nan')):.2f}%")
                if s.get("status") != "completed":
                    raise VitkitError(f"cell {run_dir} stopped ({s.get('status')}); run the same command to resume")
                cells.append({"model": m, "size": size, "seed": seed, "epochs": epochs, "test_acc": s["test_acc"],
                              "best_val_acc": s["best_val_acc"], "train_time_s": s["train_time_s"],
                              "run_dir": str(run_dir)})
    result = {"data": data, "config": config, "overrides": list(overrides or []), "images_seen": images_seen,
              "sizes": sizes, "models": models, "seeds": seeds, "cells": cells, "summary": summarise(cells)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "data_scaling.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    (out / "data_scaling.md").write_text(markdown(result) + "\n")
    plot(result, out / "data_scaling.png")
    return result


def summarise(cells: list[dict]) -> list[dict]:
    rows = []
    for m in dict.fromkeys(c["model"] for c in cells):
        for size in dict.fromkeys(c["size"] for c in cells):
            accs = [c["test_acc"] for c in cells if c["model"] == m and c["size"] == size]
            if accs:
                rows.append({"model": m, "size": size, "mean": statistics.mean(accs),
                             "std": statistics.pstdev(accs), "n": len(accs)})
    return rows


def markdown(result: dict) -> str:
    models, sizes = result["models"], result["sizes"]
    table = {(r["model"], r["size"]): r for r in result["summary"]}
    lines = ["| model | " + " | ".join(f"{s:,} images" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for m in models:
        cells = []
        for s in sizes:
            r = table[(m, s)]
            cells.append(f"{100 * r['mean']:.2f}%" + (f" ± {100 * r['std']:.2f}" if r["n"] > 1 else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in result["models"]:
        rows = [r for r in result["summary"] if r["model"] == m]
        ax.errorbar([r["size"] for r in rows], [100 * r["mean"] for r in rows], yerr=[100 * r["std"] for r in rows],
                    marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result['data']}\nsame recipe, {result['images_seen']:,} images seen per run", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(fig, path, dpi=120)
