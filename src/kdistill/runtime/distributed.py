"""Everything rank-aware lives here (torchrun): the process group, ranks, rank-0 checks, metric reduction (the
DistributedDataParallel wrapper is kdistill.engine.parallel)."""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def init_from_environment(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1: NCCL on CUDA, else gloo) and return this
    process's device (``cuda:LOCAL_RANK`` for a CUDA device without an index); single process: ``device``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(leave_process_group)
    return device


def leave_process_group() -> None:
    """Destroy the process group joined by :func:`init_from_environment`, as PyTorch asks every distributed program
    to do before it ends. Registered with ``atexit`` when the group is joined, so it runs on every way out that
    reaches the interpreter's exit (the end of the command, an error, a stop signal turned into an exception), while
    the interpreter is still whole. Without it, a gloo worker thread may still hold a finished collective's tensors
    when the interpreter is torn down; releasing them then takes the GIL from a dead interpreter and aborts the rank
    (``terminate called without an active exception``, SIGABRT), failing a run that had finished its work."""
    if is_distributed():
        dist.destroy_process_group()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum a dict of floats over all ranks (identity in a single process)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))
