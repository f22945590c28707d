"""Everything rank-aware lives here (DDP via torchrun): ranks, rank-0 checks, metric reduction."""

from __future__ import annotations

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


def init_from_environment(device: torch.device) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)


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


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks after ``backward`` (any method, its own modules included).

    Every rank must produce a gradient for the same parameters (missing ones count as zero).
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad)
        parameter.grad /= world
