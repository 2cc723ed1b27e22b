"""Data-parallel training on PyTorch's own engine: torchrun, DistributedDataParallel, samplers.

    torchrun --nproc_per_node=4 -m sagan_plugin train model=sagan train.batch_size=256 ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them a run is one process (world size 1)
and everything here degrades to no-ops, so single-device and multi-device runs share one path.
train.batch_size is the GLOBAL batch: each rank takes batch_size / world_size images.

The host's nets call their own forward inside train_step; under DDP that forward must go through
the wrapper for the gradient all-reduce. `wrap` registers the wrapper of a net and a net's
train_step asks `training_module(self)` for what to call.
"""

from __future__ import annotations

import gc
import os
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from sagan_plugin.errors import UsageError

_wrappers: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets "
                         "them)") from None


def info(message: str) -> None:
    """An INFO line for the user, from rank 0 alone: every rank of a launch takes the same
    decisions, and one decision should read as one line, not one per GPU."""
    if world_from_env().is_main:
        print(f"INFO: {message}")


def per_rank_batch(global_batch: int, world: World) -> int:
    if global_batch % world.world_size:
        raise UsageError(f"train.batch_size={global_batch} is the global batch and must divide "
                         f"evenly over the {world.world_size} processes; use a multiple of "
                         f"{world.world_size}")
    return global_batch // world.world_size


def device_for_rank(device: torch.device, world: World) -> torch.device:
    """Each rank of a multi-GPU launch takes the GPU of its local rank."""
    if not world.distributed or device.type != "cuda":
        return device
    if device.index is not None:
        raise UsageError(f"train.device={device} names one GPU, but torchrun started "
                         f"{world.world_size} processes; use train.device=cuda or auto")
    return torch.device("cuda", world.local_rank)


def init_process_group(world: World, device: torch.device) -> None:
    """Join the torchrun launch: NCCL between GPUs, gloo between CPU processes."""
    if not world.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def destroy_process_group() -> None:
    """Leave the launch, DDP wrappers first: a wrapper still alive at interpreter exit has its
    gloo group torn down then, which aborted about one CPU process in four on torch 2.13
    ("terminate called without an active exception", SIGABRT after the work was done)."""
    if _wrappers:
        _wrappers.clear()
        gc.collect()  # DDP objects sit in reference cycles: collect them now, not at exit
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """DDP around net, registered for its train_step; a no-op outside a distributed launch.

    DDP's default buffer sync (broadcast_buffers) keeps every rank's buffers equal to rank 0's
    at each forward: the spectral-norm u/v vectors (identical anyway, their update does not see
    the data) and the batch-norm running statistics (which do).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return net
    wrapper = DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True)
    _wrappers[net] = wrapper
    return wrapper


def training_module(net: nn.Module) -> nn.Module:
    """What net's train_step calls for its own forward: its DDP wrapper when it has one."""
    return _wrappers.get(net, net)


def max_over_ranks(values: list[int], device: torch.device) -> list[int]:
    """The element-wise maximum of every rank's values (one small all-reduce when
    distributed): how ranks agree on what any of them saw."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def gather_to_main(obj: object, world: World) -> list[object] | None:
    """Every rank's obj, in rank order, on rank 0 (None elsewhere)."""
    if not world.distributed:
        return [obj]
    gathered = [None] * world.world_size if world.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_main(obj: object, world: World) -> object:
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class EpochSampler(DistributedSampler):
    """Each rank's share of a shuffled epoch, a function of (seed, epoch) only, that can start
    part-way through an epoch: a resumed run sees the batches the interrupted one would have.

    The permutation does not depend on the number of ranks, so global batch k holds the same
    images whether it is read by one process or split over several.
    """

    def __init__(self, dataset: Dataset, batch_size: int, world: World, seed: int) -> None:
        super().__init__(dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.batch_size = batch_size  # per rank
        self._skip = 0

    def start_at(self, epoch: int, batches: int) -> None:
        """The next iteration is epoch `epoch`, less its first `batches` batches."""
        self.set_epoch(epoch)
        self._skip = batches * self.batch_size

    def __iter__(self):
        indices = list(super().__iter__())[self._skip:]
        self._skip = 0
        return iter(indices)
