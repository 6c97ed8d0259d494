"""Checkpoints: written atomically (temporary file, fsync, rename), read with weights_only=True."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from apoda.errors import ApodaError
from apoda.runs import checkpoint_file

FORMAT_VERSION = 1


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
    """Read a checkpoint safely: a pickle that would run code is refused, not executed."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise ApodaError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ApodaError(
            f"checkpoint {path} holds Python objects or code that safe loading "
            f"(weights_only=True) refuses; apoda never runs it ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ApodaError(f"checkpoint {path} cannot be read: {exc}") from None
    if not isinstance(state, dict) or "modules" not in state:
        raise ApodaError(f"checkpoint {path} is not an apoda checkpoint (no 'modules' entry)")
    return state


def load_module_state(
    module: torch.nn.Module, state: dict[str, Any], name: str, path: Path
) -> None:
    """Load one module's state dict strictly, naming the checkpoint when it does not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ApodaError(
            f"checkpoint {path}: its {name} does not fit this model (another architecture or "
            f"class count?): {first}"
        ) from None
