"""Multi-process training with ``torchrun``: process group, rank, and the few collectives fit needs.

``torchrun --nproc_per_node N -m softmaxlab run ...`` starts N processes and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment. :func:`setup` reads them, joins the
process group (NCCL on CUDA, gloo on the CPU) and picks the rank's device. The training
split is sharded by the loader, gradients are averaged by DistributedDataParallel, epoch
metrics are summed across ranks here, and only rank 0 writes files.

Batch-size convention: ``train.batch_size`` is the *global* batch, split evenly over the
ranks, so a config means the same optimisation (same learning rate, same number of steps)
whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from softmaxlab.errors import UserError

_joined_group = False  # set by setup(): this process has been part of a process group


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process group was created by :func:`setup`

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory and shows progress."""
        return self.rank == 0


def resolve_device(name: str, option: str = "--set train.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` or ``cuda`` as named. ``cuda``
    without a GPU, or another name, is a UserError that names ``option`` (where the name
    came from: ``--set train.device``, ``--device``)."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"{option} must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option}=cuda but no CUDA GPU is available here; use {option}=cpu (or auto)")
    return torch.device(name)


def env_world() -> World:
    """The world described by torchrun's environment variables (a single process without them)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise UserError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers ({exc}); launch with torchrun") from exc
    return World(rank, size, local_rank)


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes and return the world and this rank's device.

    A no-op (rank 0 of 1, ``device`` unchanged) outside torchrun. On CUDA each rank takes
    ``cuda:LOCAL_RANK`` and the NCCL backend; on the CPU the gloo backend.
    """
    world = env_world()
    if not world.distributed:
        return world, device
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run a single process (without torchrun)")
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {world.local_rank} but only {torch.cuda.device_count()} GPU(s) on this node; "
                "lower --nproc_per_node to the number of GPUs"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    global _joined_group
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    _joined_group = True
    return World(dist.get_rank(), dist.get_world_size(), world.local_rank, owns), device


def teardown(world: World) -> None:
    """Leave the process group if :func:`setup` created it."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def end_process(code: int) -> NoReturn:
    """Exit with ``code``; a process that joined a process group skips interpreter finalization.

    DistributedDataParallel keeps the process group referenced after
    ``destroy_process_group`` (torch 2.14: the gloo worker threads survive it once a DDP
    wrapper was built, and not otherwise), and a gloo worker thread releases a finished
    collective's tensors after the caller has moved on. When that release falls into
    interpreter finalization, the thread takes the GIL there and the process aborts
    (SIGABRT: 6 of 30 two-process CPU runs of the test suite's tiny config). Everything a run
    writes is written atomically before this point, so such a process flushes its
    streams and ends with ``os._exit``; any other process exits normally.
    """
    if _joined_group:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe or file: nothing more to say there
                stream.flush()
        os._exit(code)
    sys.exit(code)


def joined_group() -> bool:
    """Whether this process has joined a process group (:func:`setup` under torchrun)."""
    return _joined_group


def all_reduce(values: torch.Tensor, world: World, op: str = "sum") -> torch.Tensor:
    """Sum (or min / max) a tensor over the ranks; returns it unchanged for a single process."""
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return values


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (pickled); ``obj`` itself for a single process."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, world: World) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, in place.

    Each rank updates its BatchNorm statistics on its own slice of the batch; before
    evaluating, all ranks take rank 0's, which are the ones saved with the weights.
    """
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
