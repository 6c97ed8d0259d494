"""Data parallelism under torchrun: process group set-up, gradient and metric all-reduce.

Gradients are averaged by hand after each backward (what DDP does, minus the overlap), so the
methods can call their modules' own methods (features, classify) without a wrapper."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def init_distributed(device_type: str) -> tuple[int, int]:
    """Join the process group when launched by torchrun; return (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of `parameters` over all ranks (a no-op in one process)."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (confusion matrices): mIoU then equals the 1-process value."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()
