"""Reading and writing weight files without ever executing code from them."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from ..checkpoint import read_safetensors
from ..errors import VitkitError

Tensors = dict[str, torch.Tensor]


def read_tensors(path: Path) -> tuple[Tensors, dict[str, str]]:
    """All tensors of a .npz / .safetensors / .pth / .bin / .pt file, and any safetensors metadata."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise VitkitError(f"weights file {path} does not exist")
    if suffix == ".npz":
        return read_npz(path), {}
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in (".pth", ".bin", ".pt", ".ckpt"):
        return read_torch(path), {}
    raise VitkitError(f"{path}: unknown weights format '{suffix}' (.npz, .safetensors, .pth, .bin, .pt)")


def read_npz(path: Path) -> Tensors:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise VitkitError(f"{path}: refused, the file needs pickle to load ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise VitkitError(f"{path} is not a readable .npz file ({e})") from None
    out = {}
    for k, v in arrays.items():
        if v.dtype.kind not in "fiub":
            raise VitkitError(f"{path}: array '{k}' has unsupported dtype {v.dtype}")
        out[k] = torch.from_numpy(np.ascontiguousarray(v).astype(np.float32 if v.dtype.kind == "f" else v.dtype))
    return out


def read_torch(path: Path) -> Tensors:
    """torch.load with weights_only=True: a pickle that asks for anything but tensors is refused."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, zipfile.BadZipFile, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VitkitError(f"{path}: refused or unreadable ({first[:200]}); vitkit never runs code from a "
                          f"weights file") from None
    for key in ("state_dict", "model", "module", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VitkitError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VitkitError(f"cannot read {path}: {e}") from None
