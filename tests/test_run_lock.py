"""One command at a time in an output folder: a second train, demo or suite aimed at a folder in
use is refused with one line naming the process; a stale lock is taken over and said; an early
error leaves no empty run folder behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apoda.cli import main
from apoda.run_lock import LOCK_FILE
from conftest import TINY

TRAIN = ["train", "minicity/source_only", *TINY, "train.eval_every=0"]
HOLD = (
    "import sys, time; from pathlib import Path; from apoda.run_lock import FolderLock; "
    "FolderLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(120)"
)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the first process ended before it held the folder"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """Another live process holding `tmp_path/held`."""
    folder = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    yield folder, proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_a_second_train_into_a_running_run_is_refused_and_the_first_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    long_run = ["train.iterations=100000", "train.checkpoint_every=5"]
    cmd = [sys.executable, "-m", "apoda", *TRAIN, *long_run, "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(run / "checkpoints" / "last.pt", first)  # the loop is running
        for extra in ([], ["--overwrite"], ["--resume"]):
            assert main([*TRAIN, "train.iterations=1", "--out", str(run), *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"is in use by process {first.pid} (apoda " in err
        assert (run / "config.yaml").is_file()  # nothing of the first run was cleared
    finally:
        first.send_signal(signal.SIGINT)  # it stops at its next step with a checkpoint
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr and b"saved" in stderr
    assert (run / "checkpoints" / "last.pt").is_file()
    assert not (run / LOCK_FILE).exists()  # released when the run stopped


def test_a_stale_lock_is_taken_over_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = tmp_path / "run"
    run.mkdir()
    lock = f'{{"pid": {gone.pid}, "host": "{os.uname().nodename}", "command": "apoda train"}}'
    (run / LOCK_FILE).write_text(lock)
    assert main([*TRAIN, "train.iterations=1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"took over the lock of process {gone.pid} (apoda train), which no longer runs" in out
    assert (run / "metrics.json").is_file() and not (run / LOCK_FILE).exists()


def test_train_demo_and_suite_refuse_a_folder_in_use(
    holder: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, pid = holder
    commands = (
        [*TRAIN, "train.iterations=1", "--out", str(folder)],
        ["demo", "--fast", "--out", str(folder)],
        ["suite", "table1", "--fast", "--out", str(folder)],
    )
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith(f"error: {folder} is in use by process {pid} ("), command
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # nothing was written


def test_an_early_error_leaves_no_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-cityscapes"
    out = tmp_path / "runs" / "x"
    bad_target = ["data.target=cityscapes", f"data.target_root={missing}"]
    assert main([*TRAIN, *bad_target, "--out", str(out)]) == 2
    assert f"dataset root {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    demo_out = tmp_path / "demo"
    (tmp_path / "runs").mkdir()  # a folder that was there before stays
    assert main([*TRAIN, *bad_target, "--out", str(tmp_path / "runs" / "y")]) == 2
    assert (tmp_path / "runs").is_dir() and not any((tmp_path / "runs").iterdir())
    assert not demo_out.exists()
