"""The `apoda` command line as a user meets it: output, files written, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apoda.cli import COMMANDS, main
from conftest import TINY


def _fast_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[Path, str]:
    """`apoda demo --fast FLAGS` into tmp_path/demo: the folder and what it printed."""
    out = tmp_path / "demo"
    assert main(["demo", "--fast", *flags, "--out", str(out)]) == 0
    return out, capsys.readouterr().out


@pytest.mark.slow
def test_fast_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, printed = _fast_demo(tmp_path, capsys)
    assert (
        "| class | source only | APODA attack off | APODA | DACS | APODA - APODA attack off |"
        in printed
    )
    assert "its matched control is in `apoda suite selftraining`" in printed
    for row in ("| road |", "| head mean |", "| tail mean (*) |", "| mIoU |"):
        assert row in printed
    assert "*" in printed.split("| class |")[1]  # tail classes are marked
    for run in ("source_only", "apoda_none", "apoda", "dacs"):
        metrics = json.loads((out / run / "metrics.json").read_text())
        assert metrics["num_classes"] == 19 and metrics["split"] == "val"
        assert (out / run / "checkpoints" / "last.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"source_only", "apoda_none", "apoda", "dacs"}
    assert summary["self_training"] is True
    report = (out / "report.md").read_text()
    for picture in ("per_class_iou.png", "qualitative.png", "gradient_intensity.png", "curves.png"):
        assert picture in report
        assert (out / picture).stat().st_size > 5000
    # APODA and DACS start from the step-1 checkpoint
    for run in ("apoda", "dacs"):
        cfg = (out / run / "config.yaml").read_text()
        assert str(out / "source_only" / "checkpoints" / "last.pt") in cfg
    assert "name: dacs" in (out / "dacs" / "config.yaml").read_text()
    # a second call reuses the finished runs instead of training again
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("reusing finished run") == 4
    # ... but the full demo never passes the fast runs off as its own
    assert main(["demo", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "reusing" not in captured.out
    assert "source_only finished with a different config" in captured.err
    assert "train.iterations: 20 -> 1000" in captured.err and "--overwrite" in captured.err


@pytest.mark.slow
def test_the_demo_without_self_training_has_the_three_apoda_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, printed = _fast_demo(tmp_path, capsys, "--no-self-training")
    assert (
        "| class | source only | APODA attack off | APODA | APODA - APODA attack off |" in printed
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["self_training"] is False
    assert set(summary["runs"]) == {"source_only", "apoda_none", "apoda"}
    assert not (out / "dacs").exists()


@pytest.mark.slow
def test_fast_imagenet_demo_runs_the_paper_regime_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, printed = _fast_demo(tmp_path, capsys, "--imagenet")
    assert "loaded 240/240 backbone tensors" in printed  # step 1 starts from ImageNet weights
    assert "| class | source only | APODA attack off | APODA |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["family"] == "minicity_imagenet" and summary["self_training"] is False
    for run in ("source_only", "apoda_none", "apoda"):
        cfg = (out / run / "config.yaml").read_text()
        assert "arch: efficientnet_lite0" in cfg and "bn_mode: frozen" in cfg, run
    assert "MiniCity (128x256, ImageNet EfficientNet-Lite0)" in (out / "report.md").read_text()
    # the default demo does not pass these runs off as its own
    assert main(["demo", "--fast", "--out", str(out)]) == 2
    assert "model.arch: 'efficientnet_lite0' -> 'small'" in capsys.readouterr().err


def test_oracle_selection_is_flagged_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real `train.select_best` run, then `apoda report`: the report says that the snapshot
    was picked on the target val set."""
    from apoda.runs import ORACLE_NOTE, SELECTION_ORACLE

    run = tmp_path / "best"
    overrides = [*TINY, "train.iterations=2", "train.eval_every=1", "train.select_best=true"]
    assert main(["train", "minicity/source_only", *overrides, "--out", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["selection"] == SELECTION_ORACLE
    assert ORACLE_NOTE in (run / "report.md").read_text()  # the report training wrote
    assert main(["report", str(run), "--out", str(tmp_path / "again")]) == 0
    assert ORACLE_NOTE in (tmp_path / "again" / "report.md").read_text()


def test_bad_config_key_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["train", "minicity/source_only", "train.iterationz=3", "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "unknown config key train.iterationz" in err and "iterations" in err


def test_wrong_type_and_unknown_config_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "minicity/source_only", "train.iterations=many"]) == 2
    assert "train.iterations: expected int, got 'many'" in capsys.readouterr().err
    assert main(["train", "no/such/config"]) == 2
    assert "minicity/apoda" in capsys.readouterr().err  # lists the built-in configs


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "example: apoda" in capsys.readouterr().out, command


def test_train_eval_predict_report_and_stats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = ["train", "minicity/source_only", *TINY, "train.iterations=4", "train.eval_every=0"]
    assert main([*args, "--out", str(run)]) == 0
    assert "| mIoU |" in capsys.readouterr().out
    assert main([*args, "--out", str(run)]) == 2  # the folder exists
    assert "--resume" in capsys.readouterr().err

    eval_out = tmp_path / "eval"
    colors = tmp_path / "colors"
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                "minicity",
                "--out",
                str(eval_out),
                "--colors",
                str(colors),
            ]
        )
        == 0
    )
    assert "| road |" in capsys.readouterr().out
    pngs = sorted(colors.glob("*.png"))
    assert len(pngs) == 8 and Image.open(pngs[0]).size == (64, 32)  # label resolution
    metrics = json.loads((eval_out / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(json.loads((run / "metrics.json").read_text())["miou"])

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.full((40, 80, 3), 120, np.uint8)).save(frames / "a.png")
    assert main(["predict", str(run), str(frames), "--out", str(tmp_path / "pred")]) == 0
    for name in ("a_labels.png", "a_overlay.png"):
        assert Image.open(tmp_path / "pred" / name).size == (80, 40)

    assert main(["report", str(run), str(run), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()

    stats = tmp_path / "stats.json"
    assert (
        main(
            ["data", "stats", "minicity", "--out", str(stats), "--plot", str(tmp_path / "dist.png")]
        )
        == 0
    )
    data = json.loads(stats.read_text())
    assert sum(data["pixel_fraction"].values()) == pytest.approx(1.0)
    assert (tmp_path / "dist.png").stat().st_size > 5000


def test_eval_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "missing.pt"), "--data", "minicity"]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert main(["data", "stats", "gta5", str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


def test_overrides_may_follow_the_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", "minicity/source_only", "train.eval_every=0", "--out", str(out)]
    assert main([*args, *TINY, "train.iterations=1", "train.seed=3"]) == 0
    saved = (out / "config.yaml").read_text()
    assert "iterations: 1\n" in saved and "seed: 3\n" in saved
    with pytest.raises(SystemExit) as stop:
        main([*args, "--bogus", "train.iterations=1"])
    assert stop.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command without overrides takes none
        main(["eval", str(out), "train.iterations=1"])
    assert "unrecognized arguments: train.iterations=1" in capsys.readouterr().err
