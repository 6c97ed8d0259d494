"""`apoda suite --jobs N`: the suites' runs trained in up to N child processes.

Each child is `apoda suite NAME --only-seed S --rows KEY` (one run, no table); a run starts once
the run it starts from has finished, and is skipped when that run failed. The tables are written
afterwards by `apoda.suites.run_suite`, which finds every run finished. This module imports
`apoda.suites`, never the other way round."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apoda.engine.data import build_run_data
from apoda.errors import ApodaError
from apoda.pretrain import resolve_pretrained
from apoda.suites import (
    Row,
    config_family,
    row_config,
    shared_runs,
    start_key,
    suite_overrides,
    suite_rows,
    training_order,
)

Task = tuple[int, str]
"""(seed, run key): one run of one seed."""


@dataclass(frozen=True)
class _Run:
    """A run to train once: its row, and the suite and row key its child is asked for (the run
    may be another suite's row, one that this row shares)."""

    row: Row
    suite: str
    asked_as: str


def train_in_parallel(
    names: Sequence[str],
    runs: Path,
    jobs: int,
    seeds: int = 1,
    data: str = "minicity",
    fast: bool = False,
    overrides: Sequence[str] = (),
    row_keys: Sequence[str] = (),
) -> None:
    """Train every (seed, row) of the named suites once, in up to `jobs` child processes
    (`apoda suite NAME --only-seed S --rows KEY`), each row once its init row has finished.

    Rows shared by several suites (step 1, APODA, ...) and rows that share another row's run
    (`shared_runs`) are trained once. Runs are started row by row over the seeds, in the order
    the suites list them, so the first rows finish on every seed first. Each child's output is
    appended to `runs/logs/seedS-KEY.log`. A failed run is reported with its log and the rows
    that start from it are skipped; the others go on."""
    if jobs < 1:
        raise ApodaError(f"--jobs must be at least 1, got {jobs}")
    family = config_family(data)
    extra = suite_overrides(fast, overrides)
    runs_of, to_train = _runs_to_train(names, family, extra, row_keys)
    _prepare_shared_files(to_train[0].row, family, runs, extra)
    pending = [(seed, run) for run in to_train for seed in range(seeds)]
    _Pool(runs, jobs, data, extra, runs_of, pending).run()


def _runs_to_train(
    names: Sequence[str], family: str, extra: Sequence[str], row_keys: Sequence[str]
) -> tuple[dict[str, Row], list[_Run]]:
    """Row key -> the row whose run it is (`shared_runs`), and each run once, in the order the
    suites list their rows (init rows first)."""
    asked = [
        (name, row)
        for name in names
        for row in training_order(suite_rows(name, row_keys, family, extra))
    ]
    runs_of = shared_runs([row for _, row in asked], family, extra)
    to_train: dict[str, _Run] = {}  # by run key: a run shared by several rows is launched once
    for name, row in asked:
        run = runs_of[row.key]
        to_train.setdefault(run.key, _Run(run, name, row.key))
    return runs_of, list(to_train.values())


def _prepare_shared_files(first: Row, family: str, runs: Path, extra: Sequence[str]) -> None:
    """Make the files every child needs once, here, not raced for by the children: the
    generated data and built-in weights."""
    config = row_config(first, family, runs, 0, extra)
    build_run_data(config)
    resolve_pretrained(config)


def child_command(
    suite: str, key: str, seed: int, runs: Path, data: str, extra: Sequence[str]
) -> list[str]:
    """The command line of the child that trains row `key` of `suite` for one seed (no table)."""
    return [
        sys.executable, "-m", "apoda", "suite", suite, *extra,
        "--data", data, "--runs", str(runs), "--out", str(runs),
        "--only-seed", str(seed), "--rows", key,
    ]  # fmt: skip


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: stop the pool as Ctrl-C does (children save a checkpoint)."""
    raise KeyboardInterrupt


class _Pool:
    """The child processes of one `train_in_parallel`: runs waiting, running, done and failed."""

    def __init__(
        self,
        runs: Path,
        jobs: int,
        data: str,
        extra: Sequence[str],
        runs_of: dict[str, Row],
        pending: list[tuple[int, _Run]],
    ) -> None:
        self.runs, self.jobs, self.data, self.extra = runs, jobs, data, extra
        self.runs_of = runs_of
        self.pending = pending  # (seed, run) in launch order
        self.logs = runs / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
        self.done: set[Task] = set()
        self.failed: dict[Task, Path] = {}  # -> the log of the run that failed (or its start's)
        self.running: dict[subprocess.Popen[bytes], tuple[int, str, Path]] = {}

    def run(self) -> None:
        """Launch and collect children until every run is done, failed or skipped; SIGTERM and
        Ctrl-C stop the children (each saves a checkpoint) and say how to resume."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            while self.pending or self.running:
                self._schedule()
                time.sleep(0.5)
                self._collect()
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"stopped: the {len(self.running)} run(s) in training save a checkpoint and stop; "
                "the same command resumes them"
            ) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._stop_children()
        if self.failed:
            listing = "; ".join(
                f"{key} seed {seed}: {log}" for (seed, key), log in self.failed.items()
            )
            raise ApodaError(
                f"{len(self.failed)} run(s) did not finish ({listing}); no table written"
            )

    def _schedule(self) -> None:
        """One pass over the waiting runs, in order: skip those whose start failed, launch those
        whose start has finished while fewer than `jobs` children run."""
        for seed, run in list(self.pending):
            start = start_key(run.row, self.runs_of)
            if start is not None and (seed, start) in self.failed:
                self.pending.remove((seed, run))
                self.failed[(seed, run.row.key)] = self.failed[(seed, start)]
                print(f"[{run.row.key} seed {seed}] skipped: its start {start} failed")
            elif len(self.running) < self.jobs and (start is None or (seed, start) in self.done):
                self.pending.remove((seed, run))
                self._launch(seed, run)

    def _launch(self, seed: int, run: _Run) -> None:
        """Start the child that trains `run` for `seed`, its output appended to its log."""
        key = run.row.key
        log = self.logs / f"seed{seed}-{key}.log"
        command = child_command(run.suite, run.asked_as, seed, self.runs, self.data, self.extra)
        with open(log, "ab") as fh:  # a resumed run's log keeps its start
            # its own session: a Ctrl-C reaches the children once, from here
            child = subprocess.Popen(
                command, stdout=fh, stderr=fh, env=self.env, start_new_session=True
            )
        self.running[child] = (seed, key, log)
        print(f"[{key} seed {seed}] started (log {log})")

    def _collect(self) -> None:
        """Record the children that have exited as done (exit 0) or failed (with their log)."""
        for child in [c for c in self.running if c.poll() is not None]:
            seed, key, log = self.running.pop(child)
            if child.returncode == 0:
                self.done.add((seed, key))
                print(f"[{key} seed {seed}] finished")
            else:
                self.failed[(seed, key)] = log
                print(f"[{key} seed {seed}] failed (exit {child.returncode}): see {log}")

    def _stop_children(self) -> None:
        """Ask the running children to stop (SIGINT: a run stops at its next step with a
        checkpoint); kill those still running after two minutes."""
        for child in self.running:
            child.send_signal(signal.SIGINT)
        for child in self.running:
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
