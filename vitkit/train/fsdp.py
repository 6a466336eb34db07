"""Fully sharded data parallel (PyTorch's FSDP2, `fully_shard`) for models that do not fit one device.

Each transformer block (and the hybrid's ResNet stages) becomes its own shard group, so at most one
block's full parameters are gathered at a time; checkpoints are gathered into ordinary full state
dicts, so an FSDP run writes the same files as any other and resumes on any number of processes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import VitkitError


def _api():
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict, set_model_state_dict,
                                                             set_optimizer_state_dict)
    except ImportError as e:
        raise VitkitError(f"train.fsdp needs PyTorch >= 2.6 (torch.distributed.fsdp.fully_shard): {e}") from None
    return (fully_shard, StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
            set_optimizer_state_dict, MixedPrecisionPolicy)


def shard_model(model: nn.Module, device: torch.device, world_size: int,
                compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard every block, then the rest (embeddings, norm, head) as the root group; returns `model`.

    The mesh is built on the run's device, so a CPU model is moved there shard by shard (no process
    ever holds the whole model on the GPU). With bf16/fp16 autocast the gathered parameters are cast
    to that dtype (half the all-gather traffic) while gradients are reduced in fp32."""
    api = _api()
    fully_shard, MixedPrecisionPolicy = api[0], api[-1]
    from torch.distributed.device_mesh import init_device_mesh

    groups = list(getattr(model, "blocks", [])) or list(getattr(getattr(model, "features", None), "stages", []))
    encoder = getattr(model, "encoder", None)  # masked patch prediction wraps the ViT
    if not groups and encoder is not None:
        groups = list(getattr(encoder, "blocks", []))
    if not groups:
        raise VitkitError(f"train.fsdp: do not know how to shard {type(model).__name__}")
    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype else None
    kw = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    for block in groups:
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict, on the CPU of the first process only (the others get {}): what
    checkpoints hold. Every process must call it (it gathers)."""
    _, Options, get_model, *_ = _api()
    return get_model(model, options=Options(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    _, Options, _, get_optim, *_ = _api()
    state = get_optim(model, optimizer, options=Options(full_state_dict=True, cpu_offload=True))
    if not state:  # not the first process
        return {}
    return {"state": {k: {n: v.cpu() if torch.is_tensor(v) else v for n, v in s.items()}
                      for k, s in state["state"].items()}, "param_groups": state["param_groups"]}


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Full weights (on the first process; the others pass {}) broadcast into the shards."""
    _, Options, _, _, set_model, _, _ = _api()
    set_model(model, state, options=Options(full_state_dict=True, broadcast_from_rank0=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    _, Options, _, _, set_model, set_optim, _ = _api()
    options = Options(full_state_dict=True)
    set_model(model, model_state, options=options)
    set_optim(model, optimizer, optim_state, options=options)
