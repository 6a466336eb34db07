"""Multi-process training on PyTorch's own engine: torchrun sets the environment, we join its group.

`train.batch_size` is the global batch (all processes together) and `optim.lr` the learning rate
for that global batch, as in the paper; each process takes batch_size / world_size of every batch.
So one config trains the same model on 1 process or on N, and a run resumes on another count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..errors import VitkitError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # where the collectives' tensors live: nccl serves CUDA tensors only, gloo CPU ones
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, global_batch: int, what: str = "train.batch_size") -> int:
        if global_batch % self.world_size:
            raise VitkitError(f"{what}={global_batch} is the global batch and must be divisible by the "
                              f"{self.world_size} processes")
        return global_batch // self.world_size

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (float64, so counts stay exact)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_true(self, flag: bool) -> bool:
        """True only if `flag` holds on every process: keeps all ranks on the same control path."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); one device per process."""
    if not launched_by_torchrun():
        return DistContext(), device
    if not dist.is_available():
        raise VitkitError("this PyTorch build has no torch.distributed; cannot run under torchrun")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise VitkitError(f"LOCAL_RANK={local} but this machine has {count} GPU{'s' if count != 1 else ''}: "
                              f"launch at most {count} processes per node (torchrun --nproc_per_node {count})")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistContext(rank, world, local, collective_device(dist.get_backend(), device)), device


def collective_device(backend: str, device: torch.device) -> torch.device:
    """The device whose tensors `backend` reduces: the run's GPU for nccl, the CPU for gloo."""
    return device if backend == "nccl" else torch.device("cpu")


def agree_on(value: str) -> str:
    """Rank 0's value on every process (for example a time-stamped run folder)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def dist_backend() -> str:
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"


def shutdown_distributed(clean: bool = True) -> None:
    """Leave the group. After a clean run every process first waits for the others, so none tears
    down its connections while a peer still uses them (gloo aborts the process if that happens)."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
