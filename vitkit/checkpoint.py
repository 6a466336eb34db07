"""vitkit's checkpoint format: weights as safetensors with the model's config, preprocessing and classes
as JSON in the header, and a training-state file for resuming; every write atomic (vitkit.files).

This module reads and writes that format and nothing else: turning any source (a run folder, a timm
or Hugging Face file, an exported ONNX file) into a runnable model is `vitkit.load`'s job.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .errors import VitkitError
from .files import atomic_write
from .models import ResNetConfig, ViTConfig, build_model

META_KEY = "vitkit"


def read_safetensors_header(path: str | Path) -> dict[str, str]:
    """The string metadata of a .safetensors file ({} when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise VitkitError(f"{path} is not a readable safetensors file ({e})") from None


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a .safetensors file and its string metadata: the one reader vitkit uses."""
    meta = read_safetensors_header(path)
    try:
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise VitkitError(f"{path} is not a readable safetensors file ({e})") from None


def is_vitkit_file(path: str | Path) -> bool:
    """A .safetensors file with vitkit metadata (a broken one counts, so its reader reports it)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        return META_KEY in read_safetensors_header(p)
    except VitkitError:
        return True


def model_meta(model: nn.Module, **extra: Any) -> dict[str, Any]:
    cfg = model.cfg
    return {"arch": "vit" if isinstance(cfg, ViTConfig) else "resnet", "model_config": cfg.to_dict(), **extra}


def save_weights(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)}))


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise VitkitError(f"no training state at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file, reported by name
        raise VitkitError(f"cannot read training state {path}: {str(e).splitlines()[0]}") from None


def read_meta(path: str | Path) -> dict[str, Any]:
    meta = read_safetensors_header(path)
    if META_KEY not in meta:
        raise VitkitError(f"{path} has no vitkit metadata (for timm/HF/npz files use vitkit.load_model)")
    return json.loads(meta[META_KEY])


def config_from_meta(meta: dict[str, Any]) -> ViTConfig | ResNetConfig:
    cls = ViTConfig if meta.get("arch", "vit") == "vit" else ResNetConfig
    return cls.from_dict(meta["model_config"])


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that names the first mismatched keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        if missing:
            parts.append("missing keys " + ", ".join(missing[:3]))
        if extra:
            parts.append("unexpected keys " + ", ".join(extra[:3]))
        raise VitkitError(f"{source} does not fit the model: {' | '.join(parts)}")
    for k, v in state.items():
        if own[k].is_floating_point() and not v.is_floating_point():
            raise VitkitError(f"{source}: tensor {k} has dtype {str(v.dtype).replace('torch.', '')}, "
                              f"expected floating point")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        warnings.warn(f"{source}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold non-finite values "
                      f"(NaN/inf); the model will output NaN", UserWarning, stacklevel=2)
    model.load_state_dict(state)


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model a vitkit weights file describes, loaded, in eval mode, and its metadata."""
    tensors, header = read_safetensors(path)
    if META_KEY not in header:
        raise VitkitError(f"{path} has no vitkit metadata (for timm/HF/npz files use vitkit.load_model)")
    meta = json.loads(header[META_KEY])
    model = build_model(config_from_meta(meta))
    load_state_dict_checked(model, tensors, str(path))
    return model.to(device).eval(), meta
