"""Weights in and out: official .npz (ViT, AugReg, big_vision), timm, Hugging Face and vitkit files.

`load_model` infers the architecture from the tensors themselves; no registry name is needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoint import META_KEY, config_from_meta, load_state_dict_checked, model_meta, save_weights
from ..errors import VitkitError
from ..files import atomic_write, atomic_write_text
from ..run_dir import RunDir
from ..models import ViTConfig, build_model
from . import hf, npz
from .files import read_json, read_tensors
from .infer import infer_config

FORMATS = ("vitkit", "timm", "hf", "npz")
PAPER_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "crop_pct": 1.0}
# Fields applied after the weights are loaded; every other override changes the config before building.
POST_LOAD = ("img_size", "num_classes", "resample", "resample_antialias")
HINTS_KEY = "vitkit_hints"
HINT_FIELDS = ("num_heads", "act", "norm_eps", "resample", "qkv_bias")


def resolve_source(source: str | Path) -> Path:
    """A local path, or a Hub name (`hf-hub:org/name`, `org/name`) fetched with huggingface_hub."""
    s = str(source)
    p = Path(s).expanduser()
    if p.exists():
        return p
    repo = s.removeprefix("hf-hub:")
    if s.startswith("hf-hub:") or re.fullmatch(r"[\w.-]+/[\w.-]+", s):
        return _hub_download(repo)
    raise VitkitError(f"weights {s} do not exist (a file, a folder, or a Hub name like hf-hub:org/name)")


def _hub_download(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise VitkitError(f"'{repo}' names a Hub model; install huggingface_hub to download it") from None
    try:
        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.npz"]))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: all one message for the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VitkitError(f"cannot fetch '{repo}' from the Hugging Face Hub ({type(e).__name__}: {first[:160]}); "
                          f"offline, pass a local file instead") from None


def _from_folder(folder: Path) -> tuple[Path, dict]:
    """The weights file of a run folder or a Hugging Face / timm model folder, and its config.json."""
    run = RunDir(folder).weights()
    if run is not None:
        return run, {}
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
        if (folder / name).is_file():
            cfg = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
            if (folder / "preprocessor_config.json").is_file():
                cfg["_preprocessor"] = read_json(folder / "preprocessor_config.json")
            return folder / name, cfg
    npzs = sorted(folder.glob("*.npz"))
    if npzs:
        return npzs[0], {}
    raise VitkitError(f"{folder} holds no weights (model.safetensors, pytorch_model.bin, *.npz or a vitkit run)")


def read_any(source: str | Path) -> tuple[dict[str, torch.Tensor], str, dict, Path]:
    """(state dict in vitkit names, format, side information, file) for any supported source."""
    path = resolve_source(source)
    side: dict = {}
    if path.is_dir():
        path, side = _from_folder(path)
    elif (path.parent / "config.json").is_file() and path.suffix in (".safetensors", ".bin"):
        side = read_json(path.parent / "config.json")
    tensors, meta = read_tensors(path)
    if HINTS_KEY in meta:  # fields a timm file cannot show in its tensors, written by vitkit's timm export
        side.update(json.loads(meta[HINTS_KEY]))
    if META_KEY in meta:
        side["vitkit"] = json.loads(meta[META_KEY])
        return tensors, "vitkit", side, path
    if path.suffix == ".npz":
        sd, info = npz.npz_to_vitkit(tensors)
        side.update(info)
        return sd, "npz", side, path
    if hf.is_hf(tensors):
        return hf.hf_to_vitkit(tensors), "hf", side, path
    return tensors, "timm", side, path


def load_model(source: str | Path, **overrides: Any) -> nn.Module:
    """Build the model a weights file implies and load it (npz, timm, HF, vitkit; or a Hub name).

    Overrides: `img_size` (position embeddings resampled), `num_classes` (a new zero-initialised head;
    the pre-logits layer goes too, as in the paper's fine-tuning), `resample` (default: the source's
    own mode -- `official` for .npz, `bicubic` for timm and HF), `act`, dropout rates, ...
    The returned model has `pretrained_cfg`: source, format and preprocessing.
    """
    sd, fmt, side, path = read_any(source)
    known: dict[str, Any] = {}
    if fmt == "vitkit":
        cfg = config_from_meta(side["vitkit"])
        if not isinstance(cfg, ViTConfig):
            known_cfg = cfg.replace(**{k: v for k, v in overrides.items() if k in ("in_chans",)})
            model = build_model(known_cfg)
            load_state_dict_checked(model, sd, str(path))
            if "num_classes" in overrides and overrides["num_classes"] != known_cfg.num_classes:
                model.reset_classifier(overrides["num_classes"])
            model.pretrained_cfg = {"source": str(path), "format": fmt, **side["vitkit"]}
            return model
        base = cfg
    else:
        if fmt == "npz":
            known.update(num_heads=side["num_heads"], act="gelu_tanh", resample="official")
        if "num_attention_heads" in side:
            known.update(hf.config_overrides(side))
        known.update({k: side[k] for k in HINT_FIELDS if k in side})
        base = infer_config(sd, **known)
    pre_fields = {k: v for k, v in overrides.items() if k not in POST_LOAD}
    cfg = base.replace(**pre_fields)
    model = build_model(cfg)
    load_state_dict_checked(model, sd, str(path))
    if "resample" in overrides or "resample_antialias" in overrides:
        model.cfg = model.cfg.replace(**{k: overrides[k] for k in ("resample", "resample_antialias") if k in overrides})
    if "img_size" in overrides:
        model.set_img_size(overrides["img_size"])
    if "num_classes" in overrides and overrides["num_classes"] != model.cfg.num_classes:
        model.reset_classifier(overrides["num_classes"])
    model.pretrained_cfg = {"source": str(path), "format": fmt, **_preprocess_meta(fmt, side, model.cfg)}
    return model


def _preprocess_meta(fmt: str, side: dict, cfg: ViTConfig) -> dict:
    if fmt == "vitkit":
        meta = dict(side["vitkit"])
        meta["preprocess"] = {**meta.get("preprocess", {}), "img_size": list(cfg.img_size)}
        return meta
    pre = dict(PAPER_PREPROCESS)
    hp = side.get("_preprocessor", {})
    if "image_mean" in hp:
        pre.update(mean=list(hp["image_mean"]), std=list(hp["image_std"]))
    c = cfg.in_chans
    pre.update(img_size=list(cfg.img_size), in_chans=c, mean=pre["mean"][:c], std=pre["std"][:c])
    meta: dict = {"preprocess": pre}
    if "id2label" in side:
        meta["classes"] = [side["id2label"][str(i)] for i in range(len(side["id2label"]))]
    return meta


def save_model(model: nn.Module, dst: str | Path, to: str, meta: dict | None = None) -> Path:
    """Write `model` as vitkit (.safetensors + metadata), timm (.safetensors or .pth), hf (a folder with
    config.json) or npz (the official layout). Every file is written atomically."""
    dst = Path(dst)
    meta = dict(meta or {})
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if to not in FORMATS:
        raise VitkitError(f"unknown format '{to}' ({', '.join(FORMATS)})")
    if to == "vitkit":
        save_weights(dst, model, model_meta(model, **{k: v for k, v in meta.items() if k not in ("arch", "model_config")}))
    elif to == "timm":
        if dst.suffix in (".pth", ".bin", ".pt"):
            atomic_write(dst, lambda tmp: torch.save(sd, tmp))
        else:
            hints = {k: getattr(model.cfg, k) for k in HINT_FIELDS if hasattr(model.cfg, k)}
            atomic_write(dst, lambda tmp: save_file(sd, tmp, metadata={"format": "pt", HINTS_KEY: json.dumps(hints)}))
    elif to == "hf":
        dst.mkdir(parents=True, exist_ok=True)
        config = hf.hf_config(model.cfg, meta.get("classes"))
        tensors = hf.vitkit_to_hf(sd)
        atomic_write(dst / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        atomic_write_text(dst / "config.json", json.dumps(config, indent=2))
        pre = meta.get("preprocess")
        if pre:
            proc = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "do_normalize": True,
                    "do_rescale": True, "rescale_factor": 1 / 255, "image_mean": pre["mean"], "image_std": pre["std"],
                    "size": {"height": pre["img_size"][0], "width": pre["img_size"][1]}}
            atomic_write_text(dst / "preprocessor_config.json", json.dumps(proc, indent=2))
    else:
        if not isinstance(model.cfg, ViTConfig) or model.cfg.pos_embed not in ("learn", "none") or model.cfg.fc_norm:
            raise VitkitError("the official .npz layout holds plain or hybrid ViTs with learned 1D positions only")
        arrays = {k: v.float().numpy() for k, v in npz.vitkit_to_npz(sd, model.cfg.num_heads).items()}
        atomic_write(dst, lambda tmp: _savez(tmp, arrays))
    return dst


def _savez(tmp: str, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
        np.savez(f, **arrays)
