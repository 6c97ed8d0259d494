"""Bad inputs a user meets: each gives one line naming the culprit, never a traceback, never a
silently wrong answer and never lost work."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apoda.checkpoints import load_checkpoint
from apoda.cli import _parser, main
from apoda.data.minicity import MiniCityConfig, ensure_minicity
from conftest import TINY
from test_datasets import make_cityscapes

TRAIN = ["train", "minicity/source_only", *TINY, "train.eval_every=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-iteration source-only run."""
    folder = tmp_path_factory.mktemp("bad-inputs") / "run"
    assert main([*TRAIN, "train.iterations=2", "--out", str(folder)]) == 0
    return folder


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one `error:` line a failed command printed."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# -- silently wrong answers ------------------------------------------------------------------
def test_data_stats_minicity_reads_the_given_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "stats", "minicity", str(tmp_path / "nowhere")]) == 2
    assert "is not a MiniCity folder" in _error(capsys)
    small = MiniCityConfig(n_source=6, n_target_train=4, n_target_val=3, height=16, width=32)
    root = ensure_minicity(small, root=tmp_path / "mini")
    assert main(["data", "stats", "minicity", str(root)]) == 0
    assert "6 images;" in capsys.readouterr().out  # this folder's source, not the cache's
    assert main(["data", "stats", "minicity", str(root), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "3 images;" in out and "tail (< 1 % of minicity source's labelled pixels)" in out


def test_data_stats_split_has_help_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "stats", "cityscapes", "/x", "--split", "validation"])
    assert "invalid choice: 'validation'" in capsys.readouterr().err


def test_a_target_split_is_marked_with_the_source_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_cityscapes(tmp_path / "cs")
    source = tmp_path / "source.json"
    source.write_text(json.dumps({"tail_classes": ["bicycle", "rider"]}))
    out = tmp_path / "cs.json"
    args = ["data", "stats", "cityscapes", str(root), "--tail-from", str(source)]
    assert main([*args, "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert stats["tail_classes"] == ["bicycle", "rider"] and stats["tail_from"] == str(source)
    capsys.readouterr()
    source.write_text(json.dumps({"tail_classes": ["dragon"]}))
    assert main(args) == 2
    assert "classes ['dragon'] are not in cityscapes19" in _error(capsys)


def test_label_ids_outside_the_table_are_counted_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_cityscapes(tmp_path / "cs")
    label = next((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    ids = np.array(Image.open(label))
    ids[:2, :3] = 200  # 6 pixels of an id the Cityscapes table does not have
    Image.fromarray(ids).save(label)
    assert main(["data", "stats", "cityscapes", str(root)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {label}: 6 pixels hold ids [200] that are not in the Cityscapes" in err
    assert err.count("warning:") == 1  # once per file


# -- work lost, and messages that promise what is not there ----------------------------------
def test_eval_checks_its_output_folder_before_evaluating(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    def no_evaluation(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr("apoda.inference.evaluate_segmenter", no_evaluation)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["eval", str(run), "--out", str(blocker)]) == 2
    assert f"output folder {blocker} exists and is not a folder" in _error(capsys)
    assert main(["eval", str(run), "--out", str(blocker / "sub")]) == 2
    assert f"output folder {blocker / 'sub'} cannot be written" in _error(capsys)


def test_ctrl_c_before_the_first_checkpoint_saves_one(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    args = [*TRAIN[1:], "train.iterations=100", "train.log_every=1", "--out", str(folder)]
    cmd = [sys.executable, "-m", "apoda.cli", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = folder / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    message = err.decode().strip().splitlines()[-1]
    saved = load_checkpoint(folder / "checkpoints" / "last.pt")["iteration"]
    assert 2 <= saved < 100  # train.checkpoint_every is 250: saved because of the Ctrl-C
    assert message == (
        f"interrupted at iteration {saved} of 100: saved {folder / 'checkpoints' / 'last.pt'}; "
        "the same command with --resume continues from it"
    )
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert f"resumed {folder} at iteration {saved}" in resumed.stdout


def test_resume_without_a_checkpoint_says_it_starts_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "fresh"
    assert main([*TRAIN, "train.iterations=1", "--out", str(folder), "--resume"]) == 0
    assert f"no checkpoint in {folder}: --resume starts from iteration 0" in capsys.readouterr().out


def test_non_finite_stop_says_truthfully_what_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "nan"
    assert main([*TRAIN, "train.iterations=4", "optim.lr=1e30", "--out", str(folder)]) == 2
    err = _error(capsys)
    assert "No checkpoint was written yet (the first is due at iteration 250)" in err
    assert "is intact" not in err
    # the folder it left does not block the next run in it
    assert main([*TRAIN, "train.iterations=1", "--out", str(folder)]) == 0
    assert "stopped before its first checkpoint: starting afresh" in capsys.readouterr().out


def test_skipping_most_steps_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "skip"
    args = ["train.iterations=4", "optim.lr=1e30", "train.nonfinite=skip", "--out", str(folder)]
    assert main([*TRAIN, *args]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["skipped_steps"] >= 1
    (warning,) = metrics["warnings"]
    assert "steps" in warning and "were skipped for non-finite values" in warning
    assert f"warning: {warning}" in out
    logged = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert {"kind": "warning", "iteration": 4, "message": warning} in logged


def test_overwrite_clears_stale_evaluations(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "again"
    assert main([*TRAIN, "train.iterations=1", "--out", str(folder)]) == 0
    assert main(["eval", str(folder)]) == 0
    stale = folder / "eval-minicity-val" / "metrics.json"
    assert stale.is_file()
    assert main([*TRAIN, "train.iterations=1", "--out", str(folder), "--overwrite"]) == 0
    assert not stale.exists()


def test_a_demo_or_suite_aimed_at_a_training_runs_folder_is_refused(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They write their own runs and a report into --out: a run's own folder would lose its
    report.md, so it is refused before anything is written."""
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["demo", "--fast", "--out", str(run)]) == 2
    assert main(["suite", "table1", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count(f"{run} is a training run's folder (it has config.yaml)") == 2
    assert "the demo writes its own runs" in err and "a suite writes its own runs" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_report_says_where_it_writes_and_keeps_the_title(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    title = (run / "report.md").read_text().splitlines()[0]
    assert title.startswith("# apoda run ")
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out == f"rewrote {run / 'report.md'}, the run's own report\n"
    assert (run / "report.md").read_text().splitlines()[0] == title


# -- tracebacks that became one line ----------------------------------------------------------
def test_unreadable_checkpoints_are_one_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, empty = tmp_path / "notes.pt", tmp_path / "empty.pt"
    text.write_text("hello")
    empty.write_bytes(b"")
    assert main(["eval", str(text)]) == 2
    assert "is not a file written by torch.save (it starts with b'hello')" in _error(capsys)
    assert main(["eval", str(empty)]) == 2
    assert "is empty (0 bytes)" in _error(capsys)
    init = f"model.init_from={text}"
    assert main([*TRAIN, init, "--out", str(tmp_path / "r")]) == 2
    assert f"checkpoint {text} is not a file written by torch.save" in _error(capsys)


def test_a_checkpoint_of_another_class_count_names_the_tensor(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init = f"model.init_from={run / 'checkpoints' / 'last.pt'}"
    args = [*TRAIN, init, "data.scheme=synthia16", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = _error(capsys)
    assert "head.conv2d_list.0.weight has shape [19, 256, 3, 3] in the checkpoint" in err
    assert "(19 classes in the checkpoint, 16 here)" in err


@pytest.mark.parametrize("size", ["-1", "0", "two"])
def test_eval_batch_size_must_be_positive(
    run: Path, size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--batch-size", size])
    assert "argument --batch-size" in capsys.readouterr().err


def test_read_only_outputs_of_report_and_stats_are_one_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["report", str(run), "--out", str(blocker / "r")]) == 2
    assert f"output folder {blocker / 'r'} cannot be written" in _error(capsys)
    assert main(["data", "stats", "minicity", "--plot", str(blocker / "p.png")]) == 2
    assert f"output folder {blocker} exists and is not a folder" in _error(capsys)


def test_missing_labels_message_speaks_to_a_command_line_user(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_cityscapes(tmp_path / "cs", labels=False)
    (root / "gtFine" / "val" / "frankfurt").mkdir(parents=True)  # the labels were not unpacked
    assert main(["eval", str(run), "--data", "cityscapes", "--root", str(root)]) == 2
    err = _error(capsys)
    assert "have no label" in err and "labelled=False" not in err


# -- the command line a person expects --------------------------------------------------------
def test_version_and_debug_in_either_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("apoda 0.")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for argv in (["--debug", "eval", str(empty)], ["eval", str(empty), "--debug"]):
        with pytest.raises(Exception, match="is empty"):
            main(argv)


def test_every_option_has_help_and_train_lists_the_builtin_configs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def parsers(parser):  # type: ignore[no-untyped-def]
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    for parser in parsers(_parser()):
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert action.help, (parser.prog, action.option_strings)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "minicity/source_only" in capsys.readouterr().out


def test_eval_without_data_scores_the_runs_own_target(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(run)]) == 0
    assert "evaluated on minicity val" in capsys.readouterr().out
    metrics = json.loads((run / "eval-minicity-val" / "metrics.json").read_text())
    assert metrics["dataset"] == "minicity" and metrics["split"] == "val"


def test_warnings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "minicity/apoda", *TINY, "train.iterations=1", "train.eval_every=0"]
    assert main([*args, "--out", str(tmp_path / "apoda")]) == 0
    err = capsys.readouterr().err
    assert "warning: APODA without model.init_from starts from an untrained G" in err
    assert "UserWarning" not in err and ".py:" not in err


def test_the_last_logged_learning_rate_is_the_one_used(run: Path) -> None:
    """The poly schedule reaches 0 only after the last step: the last step used a positive lr."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    lrs = [r["values"]["lr/segmenter"] for r in records if r["kind"] == "train"]
    base = 0.01
    assert lrs[-1] == pytest.approx(base * (1 - 1 / 2) ** 0.9, rel=1e-6)
    assert torch.tensor(lrs).gt(0).all()


def test_eval_checks_that_the_model_fits_the_data_before_evaluating(tmp_path: Path) -> None:
    """Another class count, or labels outside the scheme, fail on the first image, not after
    a whole evaluation."""
    from apoda.data import CITYSCAPES19, SYNTHIA16, build_dataset
    from apoda.errors import ApodaError
    from apoda.inference import _check_fits
    from apoda.models import build_segmenter

    root = make_cityscapes(tmp_path / "cs")
    dataset = build_dataset("cityscapes", root, "val", CITYSCAPES19, label_full_res=True)
    with pytest.raises(ApodaError, match="predicts 16 classes but the class scheme cityscapes19"):
        _check_fits(build_segmenter("small", 16).eval(), dataset, CITYSCAPES19, torch.device("cpu"))
    synthia = build_dataset("cityscapes", root, "val", SYNTHIA16, label_full_res=True)
    _check_fits(build_segmenter("small", 16).eval(), synthia, SYNTHIA16, torch.device("cpu"))
