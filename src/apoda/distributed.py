"""Devices and data parallelism under torchrun: process group set-up, gradient and metric
all-reduce.

Gradients are averaged by hand after each backward (what DDP does, minus the overlap), so the
methods can call their modules' own methods (features, classify) without a wrapper."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist

from apoda.errors import ApodaError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present (the local rank's GPU under torchrun), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ApodaError(f"train.device {name!r} asked for CUDA, but no GPU is visible")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


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


def mean_over_ranks(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average logged scalars over ranks in one all-reduce (collective; same keys on every rank).

    A loss that is a mean over the same number of elements on every rank then logs the value
    the 1-process run with the same global batch logs, instead of rank 0's share of it."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    flat = torch.stack([values[k].detach().reshape(()).double() for k in keys])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return {k: flat[i].to(values[k].dtype) for i, k in enumerate(keys)}


def global_mean_denominator(local_count: torch.Tensor) -> torch.Tensor:
    """The divisor that turns a per-rank sum into this rank's share of the global mean.

    A loss averaged over a varying number of elements per rank (labelled pixels, with 255
    ignored) must be `local_sum / (global_count / world)`: the gradient average over ranks is
    then the gradient of the 1-process mean. Collective: every rank must call it. The global
    count is clamped to 1, so an all-ignored global batch gives a zero loss, not 0 / 0."""
    count = local_count.detach().double().clone()
    world = 1
    if is_distributed():
        dist.all_reduce(count)
        world = dist.get_world_size()
    return (count.clamp_min(1.0) / world).float()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()
