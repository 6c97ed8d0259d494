"""One process at a time in an output folder: a lock file holding the owner's pid.

A second `apoda train`, `demo` or `suite` aimed at a folder in use is refused with one line
naming the process that holds it, before anything in the folder is touched. A lock left by a
process that no longer runs (killed, machine rebooted) is taken over, and the take-over is
said. Folders the lock created are removed again when the work stopped before writing
anything into them (an early error leaves no empty run folder behind)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from apoda.errors import ApodaError

LOCK_FILE = ".apoda.lock"


def unwritable(folder: Path, exc: OSError) -> ApodaError:
    """The one-line error for an output folder that cannot be made or written."""
    return ApodaError(
        f"output folder {folder} cannot be written: {exc.strerror or type(exc).__name__}"
    )


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux's /proc), None where unknown:
    tells a live owner from a later process that was given the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the process a lock names still runs (a lock from another machine counts as
    alive: it cannot be checked from here)."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname():
        return True
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    ticks, recorded = _start_ticks(pid), owner.get("start_ticks")
    return ticks is None or recorded is None or ticks == recorded


def _describe(owner: dict[str, Any]) -> str:
    host = owner.get("host")
    where = "" if host == socket.gethostname() else f" on {host}"
    command = owner.get("command")
    since = owner.get("since")
    details = ", ".join(str(x) for x in (command, f"since {since}" if since else None) if x)
    return f"process {owner.get('pid')}{where}" + (f" ({details})" if details else "")


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The lock's owner; None when the lock vanished meanwhile; {} when it is unreadable
    (a lock cut short by a crash: stale)."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


class FolderLock:
    """Hold `folder` (created if needed) for this process until `release` or the end of a
    `with` block. Within one process the same folder may be held again (a no-op)."""

    def __init__(self, folder: Path, log: Callable[[str], None] = print) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.log = log
        self.held = False
        self.created: list[Path] = []

    def acquire(self) -> FolderLock:
        """Take the lock, or raise a one-line ApodaError naming the process holding it."""
        if self.folder.exists() and not self.folder.is_dir():
            raise ApodaError(f"output folder {self.folder} exists and is not a folder")
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unwritable(self.folder, exc) from None
        self.created = missing
        try:
            self._take()
        except BaseException:
            self._remove_created()
            raise
        return self

    def _take(self) -> None:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_ticks": _start_ticks(os.getpid()),
            "command": " ".join(["apoda", *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                if owner is None:
                    continue  # released meanwhile: try again
                if owner.get("pid") == os.getpid() and owner.get("host") == record["host"]:
                    return  # this process holds it already (not released by this object)
                if _alive(owner):
                    raise ApodaError(
                        f"{self.folder} is in use by {_describe(owner)}; wait for it to finish "
                        f"or stop it (a lock of a process that no longer runs is taken over: "
                        f"{self.path})"
                    ) from None
                if self._set_aside_stale():
                    self.log(
                        f"{self.folder}: took over the lock of {_describe(owner)}, which no "
                        "longer runs"
                    )
                continue
            except OSError as exc:
                raise unwritable(self.folder, exc) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
            self.held = True
            return

    def _set_aside_stale(self) -> bool:
        """Move a stale lock out of the way; False when another process did it first."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return False
        aside.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        """Remove the lock if this object took it, then the folders it created while they are
        empty (nothing was written: the work stopped before its first file)."""
        if self.held:
            owner = _read_owner(self.path)
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep it and its parents
                break
        self.created = []

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
