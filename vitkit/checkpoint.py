"""Checkpoints: weights as safetensors with the model's config and preprocessing in the header, a
training-state file for resuming, and atomic writes (temporary file, fsync, rename) so that a crash
never leaves a half-written checkpoint in place of a good one."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open
from torch import nn

from .errors import VitkitError
from .models import ResNetConfig, ViTConfig, build_model

META_KEY = "vitkit"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Run `write(tmp_path)`, flush it to disk, then rename over `path`; on any error `path` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise VitkitError(f"could not write {path}: {e.strerror or e}; the previous file is intact") from None
        raise


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a power cut after it must not bring the old file back)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: Path) -> int:
    """Delete the temporary files of writes that a crash (kill -9, power cut) cut short."""
    stale = list(directory.glob(".*.tmp")) if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


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


def read_meta(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise VitkitError(f"{path} is not a readable safetensors file ({e})") from None
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


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its best weights (else last); a file means itself."""
    p = Path(path)
    if p.is_dir():
        for name in ("checkpoints/best.safetensors", "checkpoints/last.safetensors", "best.safetensors",
                     "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise VitkitError(f"{p} holds no checkpoint (expected checkpoints/best.safetensors)")
    if not p.is_file():
        raise VitkitError(f"checkpoint {p} does not exist")
    return p


def _is_vitkit(path: str | Path) -> bool:
    p = Path(path)
    if p.is_dir():
        return any((p / n).is_file() for n in ("checkpoints/best.safetensors", "checkpoints/last.safetensors",
                                               "best.safetensors", "last.safetensors"))
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        with safe_open(str(p), framework="pt") as f:
            return META_KEY in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return True  # let read_meta report the broken file


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model a checkpoint describes, loaded, in eval mode, and its metadata (preprocessing, classes).
    vitkit runs and files directly; exported ONNX files (fp32 or int8) through onnxruntime; any other
    format (npz, timm, HF, Hub names) through vitkit.load_model."""
    if str(path).endswith(".onnx"):
        if not Path(path).is_file():
            raise VitkitError(f"checkpoint {path} does not exist")
        from .export import load_onnx

        return load_onnx(path)
    if not _is_vitkit(path):
        from .interop import load_model

        model = load_model(path)
        return model.to(device).eval(), dict(model.pretrained_cfg)
    p = resolve_checkpoint(path)
    meta = read_meta(p)
    model = build_model(config_from_meta(meta))
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError) as e:
        raise VitkitError(f"{p} is not a readable safetensors file ({e})") from None
    load_state_dict_checked(model, state, str(p))
    return model.to(device).eval(), meta
