"""Training stages on one x axis: a run that starts from another run's checkpoint
(`model.init_from` in its config.yaml) is drawn after that run, offset by the iterations that
checkpoint holds, so the curves read in the order the runs trained."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from apoda import runs as run_files
from apoda.errors import ApodaError
from apoda.report.reading import Run, as_number, read_run

_MAX_CHAIN = 16
"""Longest chain of runs started from runs that is followed (a loop is cut there)."""


@dataclass(frozen=True)
class Start:
    """Where a run's iteration 0 lies on the total-iterations axis, and after which run."""

    offset: int = 0
    after: str | None = None  # the run it starts from (None: from scratch)
    missing: str | None = None  # an init_from whose run folder was not found


def init_from(run: Run) -> str | None:
    """The `model.init_from` of a run's config.yaml, if it has one."""
    model = run.config.get("model")
    value = model.get("init_from") if isinstance(model, Mapping) else None
    return str(value) if value else None


def _start_folder(init: str) -> tuple[Path, str]:
    """The run folder a `model.init_from` points into, and which checkpoint ("last"/"best")."""
    path = Path(init).expanduser()
    if path.suffix == ".pt" or path.parent.name == run_files.CHECKPOINT_DIR:
        best = path.name == Path(run_files.BEST_CHECKPOINT).name
        return path.parent.parent, "best" if best else "last"
    return path, "last"  # a run folder: its last checkpoint (runs.checkpoint_file)


def checkpoint_iteration(run: Run, which: str = "last") -> int | None:
    """Training iterations in a run's last (or oracle-best) checkpoint, from its log/metrics."""
    metrics = run.metrics or {}
    if which == "best" and run_files.is_oracle_selection(metrics.get("selection")):
        best = as_number(metrics.get("iteration"))
        if math.isfinite(best):
            return int(best)
    logged = [as_number(r.get("iteration")) for r in run.log if r.get("kind") in ("train", "eval")]
    logged = [i for i in logged if math.isfinite(i)]
    if logged:
        return int(max(logged))
    final = as_number(metrics.get("iteration"))
    if math.isfinite(final):
        return int(final)
    train = run.config.get("train")
    planned = as_number(train.get("iterations")) if isinstance(train, Mapping) else math.nan
    return int(planned) if math.isfinite(planned) else None


def _find(folder: Path, known: Sequence[Run]) -> Run | None:
    """The run of `known` in `folder` (a relative folder also matches a path ending in it), else
    the run folder read from disk, else None."""
    for run in known:
        resolved = run.path.resolve()
        if resolved == folder.resolve() or (
            not folder.is_absolute() and resolved.parts[-len(folder.parts) :] == folder.parts
        ):
            return run
    try:
        return read_run(folder)
    except ApodaError:
        return None


def run_start(run: Run, known: Sequence[Run], depth: int = 0) -> Start:
    """Where `run` starts: after the run its `model.init_from` names, at that run's own start
    plus the iterations of the checkpoint it took (0 when it has none or it is not found)."""
    init = init_from(run)
    if init is None or depth >= _MAX_CHAIN:
        return Start()
    folder, which = _start_folder(init)
    parent = _find(folder, known)
    iterations = checkpoint_iteration(parent, which) if parent is not None else None
    if parent is None or iterations is None:
        return Start(missing=init)
    before = run_start(parent, known, depth + 1)
    return Start(before.offset + iterations, parent.name)


def run_starts(runs: Sequence[Run]) -> list[Start]:
    """`run_start` of each run, the others given as the runs it may start from."""
    return [run_start(run, runs) for run in runs]
