"""Reading files written by `torch.save` safely (weights only) with one-line errors: a
missing, empty, truncated or foreign file, or a pickle that would run code, is an ApodaError
that names the file and says which of these it is. Nothing in a file is ever executed."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from apoda.errors import ApodaError

_ZIP_MARK = b"PK\x03\x04"  # torch.save writes a zip archive
_PICKLE_PROTOCOL_MARK = 0x80  # the first byte of a pickle (torch's legacy, non-zip format)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's are many lines long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _refused_global(exc: BaseException) -> str | None:
    """The global that weights-only unpickling refused, if that is what happened."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return found.group(1) if found else None


def read_torch_file(path: Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; `what` names the file in errors
    (e.g. "checkpoint", "pretrained weights")."""
    if not path.is_file():
        raise ApodaError(f"{what} {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ApodaError(f"{what} {path} is empty (0 bytes): its writing was interrupted?")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head.startswith(_ZIP_MARK) and head[0] != _PICKLE_PROTOCOL_MARK:
        raise ApodaError(
            f"{what} {path} is not a file written by torch.save (it starts with {head!r})"
        )
    if head.startswith(_ZIP_MARK) and not zipfile.is_zipfile(path):
        raise ApodaError(
            f"{what} {path} is truncated or damaged ({size} bytes: a torch.save archive "
            "without its end); was its writing interrupted?"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(exc)
        if refused:
            raise ApodaError(
                f"{what} {path} holds Python objects or code ({refused}) that safe loading "
                "(weights_only=True) refuses; apoda never runs it"
            ) from None
        raise ApodaError(f"{what} {path} cannot be unpickled: {first_line(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise ApodaError(
            f"{what} {path} cannot be read ({size} bytes; truncated?): {first_line(exc)}"
        ) from None
