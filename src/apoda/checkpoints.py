"""Checkpoint files: written atomically (temporary file, fsync, rename), read with
weights_only=True, and module states loaded strictly with a one-line account of what does not fit.

A leaf below models, methods and the engine: it knows no run folder and no architecture. A
caller resolves a run folder to its checkpoint file (`apoda.runs.checkpoint_file`) and passes
in how a module renames old state keys (`apoda.models.segmenter.upgrade_state_keys`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from apoda.errors import ApodaError
from apoda.torch_files import read_torch_file

FORMAT_VERSION = 1

KeyUpgrade = Callable[[Mapping[str, Any]], dict[str, Any]]
"""A state dict with old key names renamed to the ones a module loads today."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a crash leaves either the old file or the new one whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save({"format": FORMAT_VERSION, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely: a pickle that would run code is refused, not executed."""
    path = Path(path)
    state = read_torch_file(path, "checkpoint")
    if not isinstance(state, dict) or "modules" not in state:
        raise ApodaError(f"checkpoint {path} is not an apoda checkpoint (no 'modules' entry)")
    return state


def _misfit(module: torch.nn.Module, state: Mapping[str, Any]) -> str | None:
    """What keeps `state` from loading into `module`: the first tensor of another shape (with
    the class counts when it is a classifier's), then the counts of missing and extra keys."""
    own = module.state_dict()
    problems = []
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            problems.append(
                f"{key} has shape {list(value.shape)} in the checkpoint but {list(own[key].shape)} "
                f"here"
            )
            if key.startswith(("head.", "aux_head.")) and key.endswith("weight"):
                problems[-1] += (
                    f" ({value.shape[0]} classes in the checkpoint, {own[key].shape[0]} here)"
                )
            break
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing:
        problems.append(f"{len(missing)} tensors missing (first: {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors (first: {extra[0]})")
    return "; ".join(problems) or None


def load_module_state(
    module: torch.nn.Module,
    state: dict[str, Any],
    name: str,
    path: Path,
    upgrade_keys: KeyUpgrade | None = None,
) -> None:
    """Load one module's state dict strictly, naming the checkpoint and what does not fit
    (another architecture or another class count). `upgrade_keys`: how the module renames old
    keys as it loads them (the segmenter's pre-0.2 names), so the fit is judged on those names."""
    problem = _misfit(module, state if upgrade_keys is None else upgrade_keys(state))
    if problem is not None:
        raise ApodaError(f"checkpoint {path}: its {name} does not fit this model: {problem}")
    module.load_state_dict(state, strict=True)
