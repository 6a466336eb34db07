"""`vitkit explain` and `vitkit analyze`: the analysis functions applied to a checkpoint, written as
pictures, raw numbers (.npy / JSON) and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import AugConfig, DataConfig
from ..data.datasets import ImageDataset, build_data, make_loader
from ..data.images import image_to_tensor, load_image
from ..errors import VitkitError
from ..load import load
from . import plots
from .attention import _require_attention, explain_image, mean_attention_distance
from .embeddings import embedding_filters_pca, neighbour_contrast, position_similarity


def _load(checkpoint: str | Path, device: str, precision: str):
    loaded = load(checkpoint, device)
    _require_attention(loaded.model)
    model = loaded.for_inference(precision).model  # PyTorch: the analyses read its attention
    return model, loaded.meta, loaded.preprocess


def explain(checkpoint: str | Path, images: list[str | Path], out: str | Path, top_k: int = 5,
            device: str = "cpu", precision: str = "auto") -> list[dict[str, Any]]:
    """Per image: rollout overlay at the original size (PNG), the raw rollout map (.npy), last-layer
    per-head attention maps (PNG) and the top-k prediction. Unreadable images are reported, not fatal."""
    model, meta, pre = _load(checkpoint, device, precision)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = meta.get("classes") or [str(i) for i in range(model.num_classes)]
    results = []
    for i, path in enumerate(images):
        try:
            img = load_image(path)
        except VitkitError as e:
            results.append({"image": str(path), "error": str(e)})
            continue
        x = pre.eval(image_to_tensor(img, pre.in_chans))[None].to(device)
        e = explain_image(model, x)
        stem = f"{i:03d}_{Path(path).stem}"
        np.save(out / f"{stem}_rollout.npy", e.rollout.numpy())
        plots.overlay(np.asarray(img), e.rollout, out / f"{stem}_rollout.png")
        plots.head_grid(e.last_heads, out / f"{stem}_heads.png", f"{Path(path).name}: last-layer attention per head")
        probs = e.logits.softmax(-1)
        top = probs.topk(min(top_k, len(classes)))
        results.append({"image": str(path), "rollout_png": str(out / f"{stem}_rollout.png"),
                        "rollout_npy": str(out / f"{stem}_rollout.npy"), "heads_png": str(out / f"{stem}_heads.png"),
                        "top": [{"class": classes[c], "prob": round(v, 6)}
                                for v, c in zip(top.values.tolist(), top.indices.tolist())]})
    (out / "explain.json").write_text(json.dumps(results, indent=2))
    return results


def analyze(checkpoint: str | Path, data: str, out: str | Path, num_images: int = 128, batch_size: int = 64,
            device: str = "cpu", precision: str = "auto") -> dict[str, Any]:
    """The three panels of the paper's Figure 7 as PNG + JSON, and report.html showing all of them."""
    model, meta, pre = _load(checkpoint, device, precision)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = build_data(DataConfig(spec=data), AugConfig(), pre.img_size, pre.in_chans)
    ds = ImageDataset(bundle.test.split, pre, None)
    dist = mean_attention_distance(model, make_loader(ds, batch_size, 0), num_images)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "data": data, "images": min(num_images, len(ds)),
        "cell_pixels": model.cfg.pixels_per_token,
        "mean_attention_distance": dist.tolist(), "per_layer_mean_distance": dist.mean(1).tolist(),
    }
    name = meta.get("model_name", Path(str(checkpoint)).name)
    plots.distance_scatter(dist, out / "attention_distance.png", f"{name}: mean attention distance")
    panels = [("Mean attention distance", "attention_distance.png",
               "per layer (mean over heads): " + ", ".join(f"{v:.2f}" for v in result["per_layer_mean_distance"])
               + " pixels")]
    try:
        sim = position_similarity(model)
        result["position_similarity"] = neighbour_contrast(sim)
        np.save(out / "position_similarity.npy", sim.numpy())
        plots.similarity_grid(sim, out / "position_similarity.png", f"{name}: position-embedding similarity")
        panels.append(("Position-embedding similarity", "position_similarity.png",
                       ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in result["position_similarity"].items())))
    except VitkitError as e:
        result["position_similarity"] = {"skipped": str(e)}
    try:
        comps, var = embedding_filters_pca(model)
        result["filters_pca_explained_variance"] = var.tolist()
        plots.filter_grid(comps, out / "filters_pca.png", f"{name}: principal components of the embedding filters")
        panels.append(("Embedding filters: principal components", "filters_pca.png",
                       f"top {len(var)} components explain {var.sum().item() * 100:.1f}% of the variance"))
    except VitkitError as e:
        result["filters_pca_explained_variance"] = {"skipped": str(e)}
    (out / "analysis.json").write_text(json.dumps(result, indent=2))
    _html(out / "report.html", name, data, result, panels, out)
    return result


def _html(path: Path, name: str, data: str, result: dict, panels: list[tuple[str, str, str]], folder: Path) -> None:
    parts = [f"<!doctype html><meta charset='utf-8'><title>vitkit analysis: {html.escape(name)}</title>",
             "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}img{max-width:100%}</style>",
             f"<h1>{html.escape(name)}</h1><p>data: {html.escape(data)}; {result['images']} images; "
             f"{result['cell_pixels']} input pixels per token</p>"]
    for title, png, caption in panels:
        b64 = base64.b64encode((folder / png).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{b64}'>"
                     f"<p>{html.escape(caption)}</p>")
    parts.append("<h2>Numbers</h2><pre>" + html.escape(json.dumps(result, indent=1)) + "</pre>")
    path.write_text("\n".join(parts))
