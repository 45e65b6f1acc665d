"""Training on several GPUs (or CPU processes) with ``torch.distributed`` and ``torchrun``.

PyTorch's launcher starts one process per device and tells each who it is through
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``)::

    torchrun --nproc_per_node=8 -m ssd_tutorial.cli train --data voc --root VOCdevkit/VOC2007 ...

:func:`process_group` reads them, joins the process group (NCCL on GPUs, Gloo on CPUs) and
leaves it at the end; without ``torchrun`` it does nothing and the same code trains in one
process. The helpers below answer "how many processes, which one am I" in both cases, so that
the training loop (:class:`ssd_tutorial.train.Trainer`) can wrap the model in
``DistributedDataParallel``, shard the data and let only the first process (rank 0) write
logs and checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

#: The variables ``torchrun`` sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

#: How long a process waits for the others at a collective operation. Rank 0 evaluates alone
#: after each epoch while the others wait at a barrier: minutes on a large validation set, more
#: than NCCL's default of 10 minutes allows on a slow one.
TIMEOUT = timedelta(minutes=30)


def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (or ``python -m torch.distributed.run``)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def setup(device: str | torch.device | None = None) -> torch.device:
    """Join the process group when launched by ``torchrun``; return this process's device.

    Under ``torchrun``, process ``LOCAL_RANK`` of a machine trains on GPU ``LOCAL_RANK`` and
    the processes talk through NCCL; with ``device="cpu"`` (or no GPU) they run on the CPU and
    talk through Gloo. Without ``torchrun`` nothing is initialised.

    Args:
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA if available, else CPU). Under
            ``torchrun`` give no GPU index: each process takes its own.

    Raises:
        ValueError: under ``torchrun``, for a device other than CUDA or CPU, a GPU index, or
            more processes on the machine than it has GPUs.
    """
    if not launched_by_torchrun():
        return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device = _process_device(device, int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return device


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str | torch.device | None = None) -> Iterator[torch.device]:
    """:func:`setup` on entry, :func:`teardown` on exit, also when the body raises."""
    try:
        yield setup(device)
    finally:
        teardown()


def world_size() -> int:
    """Number of training processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in ``0 .. world_size() - 1`` (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True for the process that writes logs and checkpoints and evaluates (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the processes, on every process (in place; returned)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def local_batch_size(global_batch_size: int, num_processes: int) -> int:
    """The images per step of each process when ``global_batch_size`` is split evenly.

    ``--batch-size`` is the global batch, the number of images of one optimisation step, so a
    run means the same thing on any number of devices. Changing it changes the training: scale
    the learning rate with it (the linear scaling rule of Goyal et al., 2017: k times the batch,
    k times the learning rate, with a warm-up), nothing does it silently.

    Raises:
        ValueError: if the batch does not split evenly over the processes.
    """
    if global_batch_size < 1:
        raise ValueError(f"the batch size must be >= 1, got {global_batch_size}")
    if global_batch_size % num_processes:
        raise ValueError(
            f"the batch size {global_batch_size} is the global batch of all {num_processes} "
            f"processes and must be divisible by {num_processes} (e.g. "
            f"{num_processes * max(global_batch_size // num_processes, 1)})"
        )
    return global_batch_size // num_processes


def _process_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """This process's device under ``torchrun``: GPU ``local_rank`` or the CPU."""
    requested = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if requested.type not in ("cuda", "cpu"):
        raise ValueError(
            f"distributed training runs on cuda (NCCL) or cpu (Gloo) devices, got {requested}"
        )
    if requested.index is not None:
        raise ValueError(
            f"under torchrun each process trains on GPU LOCAL_RANK: give --device cuda without "
            f"an index, got {requested}"
        )
    if requested.type == "cpu":
        return requested
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"torchrun started process {local_rank} of this machine but it has "
            f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node <= the number of GPUs"
        )
    return torch.device("cuda", local_rank)
