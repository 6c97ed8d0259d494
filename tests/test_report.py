"""Tests for apoda.report: run folders are read, every picture is drawn, report.md is right."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from apoda.config import Config, config_to_dict
from apoda.errors import ApodaError
from apoda.report import (
    plot_class_distribution,
    plot_curves,
    plot_gradient_intensity,
    plot_per_class_iou,
    plot_pseudo_labels,
    plot_qualitative,
    read_run,
    write_report,
)
from apoda.report.domains import domain_stats
from apoda.report.plots import (
    _class_distribution_figure,
    _curves_figure,
    _moving_average,
    _per_class_iou_figure,
    _pseudo_labels_figure,
    _qualitative_figure,
    _save,
    legend_classes,
    near_zero,
)
from apoda.report.reading import run_tail
from apoda.report.stages import run_starts

CLASSES = ["road", "car", "sign", "bike"]
TAIL = ["sign", "bike"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_PROBE = "no run logged pseudo-label probes (only self-training methods with a mean teacher do)"


def _palette() -> np.ndarray:
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(CLASSES)] = [[128, 64, 128], [0, 0, 142], [220, 220, 0], [119, 11, 32]]
    return palette


def _train_line(iteration: int, attack: bool) -> dict[str, Any]:
    values: dict[str, float] = {
        "loss/seg_source": 2.0 / (1 + iteration),
        "loss/adv": 0.7 + 0.01 * iteration,
        "lr/classifier": 2.5e-4 * (1 - iteration / 100) ** 0.9,
    }
    if attack:
        for domain, scale in (("source", 1.0), ("target", 0.1)):
            for k in range(3):
                values[f"attack/{domain}/grad_adv/k{k}"] = scale * 1e-3 * (k + 1)
                values[f"attack/{domain}/grad_l2/k{k}"] = scale * 10.0 ** (-k)
                values[f"attack/{domain}/l2/k{k}"] = 0.5 * (k + 1)
            values[f"attack/{domain}/grad_seg/k0"] = scale * 5.0
    return {"kind": "train", "iteration": iteration, "time": 0.1 * iteration, "values": values}


def _make_run(
    root: Path,
    name: str,
    ious: list[float | None],
    *,
    method: str = "apoda",
    attack: bool = True,
    evals: bool = True,
    stats: bool = True,
    samples: bool = True,
    selection: str = "final",
) -> Path:
    """Write a small but complete run folder, as the training loop would."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}, "seed": 0}))
    per_class = dict(zip(CLASSES, ious, strict=True))
    finite = [v for v in ious if v is not None]
    metrics = {
        "dataset": "minicity",
        "split": "val",
        "num_classes": len(CLASSES),
        "class_names": CLASSES,
        "miou": sum(finite) / len(finite),
        "per_class": per_class,
        "tail_classes": TAIL,
        "head_miou": (ious[0] + ious[1]) / 2,  # type: ignore[operator]
        "tail_miou": None,
        "iteration": 40,
        "checkpoint": str(folder / "checkpoints" / "final.pt"),
        "subsets": {"mIoU13": 12.25},
        "selection": selection,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    lines = [_train_line(i, attack) for i in range(0, 40, 2)]
    if evals:
        lines += [
            {
                "kind": "eval",
                "iteration": i,
                "miou": 10.0 + i,
                "head_miou": 20.0 + i,
                "tail_miou": 1.0 + i / 4,
                "per_class": {},
            }
            for i in (20, 40)
        ]
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if stats:
        (folder / "stats").mkdir()
        for domain, fractions in (
            ("source", [0.6, 0.3, 0.09, 0.01]),
            ("target", [0.5, 0.2, 0.0, 0.3]),
        ):
            data = {
                "dataset": domain,
                "split": "train",
                "num_images": 3,
                "class_names": CLASSES,
                "pixel_fraction": dict(zip(CLASSES, fractions, strict=True)),
                "ignored_fraction": 0.05,
                "tail_classes": TAIL,
            }
            (folder / "stats" / f"{domain}.json").write_text(json.dumps(data))
    if samples:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, len(CLASSES), size=(2, 24, 32), dtype=np.uint8)
        labels[:, :3] = 255
        np.savez(
            folder / "samples.npz",
            images=rng.integers(0, 256, size=(2, 24, 32, 3), dtype=np.uint8),
            labels=labels,
            predictions=rng.integers(0, len(CLASSES), size=(2, 24, 32), dtype=np.uint8),
        )
    return folder


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert width > 200 and height > 150


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    return [
        _make_run(tmp_path / "runs", "apoda", [90.0, 70.0, 12.5, None]),
        _make_run(
            tmp_path / "runs",
            "source_only",
            [80.0, 60.0, 5.0, 2.5],
            method="source_only",
            attack=False,
            stats=False,
            selection="oracle-best",
        ),
    ]


def test_read_run_loads_every_part(two_runs: list[Path]) -> None:
    run = read_run(two_runs[0])
    assert run.name == "apoda" and run.method == "apoda"
    assert run.metrics is not None and run.metrics["per_class"]["bike"] is None
    assert len(run.train_records) == 20 and len(run.eval_records) == 2
    assert run.stats is not None and set(run.stats) == {"source", "target"}
    assert run.samples is not None and run.samples.labels.shape == (2, 24, 32)
    assert read_run(two_runs[0], name="ours").name == "ours"
    assert read_run(two_runs[1]).stats is None


def test_read_run_minimal_folder_and_truncated_last_line(tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "config.yaml").write_text("method:\n  name: asn\n")
    (folder / "log.jsonl").write_text(json.dumps(_train_line(0, False)) + '\n{"kind": "tra')
    run = read_run(folder)
    assert run.method == "asn" and run.metrics is None and run.stats is None
    assert run.samples is None and len(run.log) == 1


def test_non_run_folder_raises_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(ApodaError, match="not_a_run"):
        read_run(folder)
    with pytest.raises(ApodaError, match="missing_folder"):
        read_run(tmp_path / "missing_folder")


def test_bad_files_raise_naming_the_file(tmp_path: Path) -> None:
    folder = _make_run(tmp_path, "broken", [1.0, 2.0, 3.0, 4.0], samples=False)
    (folder / "log.jsonl").write_text('{"kind": "train"}\nnot json\n{"kind": "eval"}\n')
    with pytest.raises(ApodaError, match=r"log\.jsonl:2"):
        read_run(folder)
    (folder / "log.jsonl").unlink()
    np.savez(folder / "samples.npz", images=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ApodaError, match=r"samples\.npz.*labels and predictions"):
        read_run(folder)


def test_each_picture_is_a_valid_png(two_runs: list[Path], tmp_path: Path) -> None:
    runs = [read_run(p) for p in two_runs]
    out = tmp_path / "pictures"
    assert runs[0].stats is not None
    _assert_png(plot_class_distribution(runs[0].stats, out / "class_distribution.png"))
    _assert_png(plot_per_class_iou(runs, out / "per_class_iou.png"))
    _assert_png(plot_qualitative(runs, out / "qualitative.png", _palette()))
    _assert_png(plot_gradient_intensity(runs[0], out / "gradient_intensity.png"))
    _assert_png(plot_curves(runs, out / "curves.png"))


def test_qualitative_grid_shape_follows_runs_and_samples(
    two_runs: list[Path], tmp_path: Path
) -> None:
    runs = [read_run(p) for p in two_runs]
    one = plot_qualitative(runs[:1], tmp_path / "one.png", _palette(), max_samples=1)
    both = plot_qualitative(runs, tmp_path / "both.png", _palette(), max_samples=2)
    with Image.open(one) as a, Image.open(both) as b:
        assert b.size[0] > a.size[0] * 1.2  # one more prediction column
        assert b.size[1] > a.size[1] * 1.5  # two sample rows instead of one


def test_qualitative_rejects_mismatched_samples_and_bad_palette(
    two_runs: list[Path], tmp_path: Path
) -> None:
    runs = [read_run(p) for p in two_runs]
    with pytest.raises(ApodaError, match="palette"):
        plot_qualitative(runs, tmp_path / "q.png", np.zeros((19, 3), np.uint8))
    other = runs[1].samples
    assert other is not None
    other.labels = other.labels[:, :12]
    other.predictions = other.predictions[:, :12]
    with pytest.raises(ApodaError, match="source_only"):
        plot_qualitative(runs, tmp_path / "q.png", _palette())


def test_gradient_intensity_needs_attack_keys(two_runs: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ApodaError, match="grad_"):
        plot_gradient_intensity(read_run(two_runs[1]), tmp_path / "g.png")


def test_report_tables_markers_and_links(two_runs: list[Path], tmp_path: Path) -> None:
    runs = [read_run(p) for p in two_runs]
    out = tmp_path / "report"
    report = write_report(runs, out, title="MiniCity check", palette=_palette())
    assert report == out / "report.md"
    text = report.read_text()
    assert text.startswith("# MiniCity check\n")
    header = (
        "| run | method | evaluated on | iteration | mIoU | head mIoU | tail mIoU | mIoU13 "
        "| selection |"
    )
    assert header in text
    assert "| apoda | apoda | minicity/val | 40 | 57.5 | 80.0 | n/a | 12.2 | final |" in text
    assert (
        "| source_only | source_only | minicity/val | 40 | 36.9 | 70.0 | n/a | 12.2 "
        "| oracle-best |" in text
    )
    assert "Note: `oracle-best` picks the snapshot by its target-val mIoU" in text
    assert "| class | apoda | source_only |" in text
    assert "| road | 90.0 | 80.0 |" in text
    assert "| sign* | 12.5 | 5.0 |" in text
    assert "| bike* | n/a | 2.5 |" in text
    assert "| car | 70.0 | 60.0 |" in text
    for picture in (
        "class_distribution",
        "per_class_iou",
        "qualitative",
        "gradient_intensity",
        "curves",
    ):
        assert f"]({picture}.png)" in text
        _assert_png(out / f"{picture}.png")
    assert text.count("How to read this:") == 5
    assert text.count("_Not drawn:") == 1  # no run here logged pseudo-labels
    assert f"_Not drawn: {NO_PROBE}._" in text


def test_report_notes_missing_data_instead_of_crashing(tmp_path: Path) -> None:
    folder = _make_run(
        tmp_path,
        "quiet",
        [50.0, 40.0, 30.0, 20.0],
        attack=False,
        evals=False,
        stats=False,
        samples=False,
    )
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text("method:\n  name: advent\n")
    runs = [read_run(folder), read_run(bare)]
    text = write_report(runs, tmp_path / "out").read_text()
    assert "_Not drawn: no run has stats/source.json or stats/target.json._" in text
    assert "_Not drawn: no run has samples.npz._" in text
    assert "_Not drawn: no run logged attack/*/grad_* values" in text
    assert "](per_class_iou.png)" in text and "](curves.png)" in text
    assert not (tmp_path / "out" / "qualitative.png").exists()
    assert "| bare | advent | no metrics.json |" in text
    assert "oracle-best" not in text


def test_report_on_run_without_any_log_or_metrics(tmp_path: Path) -> None:
    bare = tmp_path / "fresh"
    bare.mkdir()
    (bare / "config.yaml").write_text("method:\n  name: apoda\n")
    text = write_report([read_run(bare)], tmp_path / "out").read_text()
    assert text.count("_Not drawn:") == 6
    assert "_No run has per-class IoU" in text
    with pytest.raises(ApodaError, match="no runs"):
        write_report([], tmp_path / "out2")


def test_moving_average_is_trailing_and_keeps_short_series() -> None:
    x = np.arange(6, dtype=float)
    y = np.array([0.0, 3.0, 6.0, 0.0, 3.0, 6.0])
    sx, sy = _moving_average(x, y, 3)
    np.testing.assert_array_equal(sx, [2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(sy, [3.0, 3.0, 3.0, 3.0])
    short_x, short_y = _moving_average(x[:2], y[:2], 3)
    np.testing.assert_array_equal(short_x, x[:2])
    np.testing.assert_array_equal(short_y, y[:2])


def test_curves_accept_runs_with_only_eval_lines(tmp_path: Path) -> None:
    folder = tmp_path / "evals_only"
    folder.mkdir()
    (folder / "config.yaml").write_text("method:\n  name: asn\n")
    lines = [
        {
            "kind": "eval",
            "iteration": i,
            "miou": None if i == 0 else 30.0 + i,
            "head_miou": 40.0,
            "tail_miou": 5.0,
        }
        for i in (0, 10, 20)
    ]
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    _assert_png(plot_curves([read_run(folder)], tmp_path / "c.png", window=5))


def _short_run(root: Path, name: str, points: int, level: float = 1.0) -> Path:
    """A run folder whose log holds `points` training lines of one loss (a short run)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("method:\n  name: source_only\n")
    lines = [
        {"kind": "train", "iteration": i, "time": 0.1, "values": {"loss/seg": level - 0.1 * i}}
        for i in range(1, points + 1)
    ]
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def _colour_pixels(path: Path, hex_colour: str) -> int:
    colour = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    return int((pixels == colour).all(axis=-1).sum())


C0, C1 = "#1f77b4", "#ff7f0e"  # matplotlib's first two cycle colours


@pytest.mark.parametrize("points", [1, 2])
def test_curves_of_a_short_run_show_its_values(tmp_path: Path, points: int) -> None:
    run = read_run(_short_run(tmp_path, "short", points))
    _assert_png(plot_curves([run], tmp_path / "curves.png"))
    # The same picture without its legend (whose handle is drawn in the series' colour too):
    # the series itself must leave pixels of its colour.
    figure = _curves_figure([run])
    for axes in figure.axes:
        if axes.get_legend() is not None:
            axes.get_legend().remove()
    path = _save(figure, tmp_path / "no-legend.png")
    assert _colour_pixels(path, C0) >= 10 * points


def test_curves_of_two_short_runs_show_both(tmp_path: Path) -> None:
    runs = [
        read_run(_short_run(tmp_path, name, points, level))
        for name, points, level in (("one", 1, 2.0), ("two", 2, 1.0))
    ]
    figure = _curves_figure(runs)
    for axes in figure.axes:
        axes.get_legend().remove()
    path = _save(figure, tmp_path / "both.png")
    assert _colour_pixels(path, C0) >= 10 and _colour_pixels(path, C1) >= 20


def test_class_distribution_legend_does_not_cover_the_bars(
    two_runs: list[Path], tmp_path: Path
) -> None:
    stats = read_run(two_runs[0]).stats
    assert stats is not None and len(stats) == 2
    figure = _class_distribution_figure(stats)
    FigureCanvasAgg(figure).draw()
    (axes,) = figure.axes
    legend = axes.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == list(stats)
    box = legend.get_window_extent()
    bars = [bar for container in axes.containers for bar in container]
    assert len(bars) == 2 * len(CLASSES)
    for bar in bars:
        assert not box.overlaps(bar.get_window_extent())
    assert not box.overlaps(axes.get_window_extent())  # clear of the whole plotting area
    # The saved picture keeps the legend (it lies outside the axes).
    path = plot_class_distribution(stats, tmp_path / "dist.png")
    with Image.open(path) as image:
        assert image.size[0] >= box.x1 - axes.get_window_extent().x0


# --------------------------------------------------------------------------- picture content


def test_qualitative_legend_names_every_class_shown_and_only_those(
    two_runs: list[Path],
) -> None:
    runs = [read_run(p) for p in two_runs]
    for run, prediction in zip(runs, (2, 1), strict=True):
        assert run.samples is not None
        run.samples.labels[:] = 0
        run.samples.labels[:, :3] = 255  # an ignore band
        run.samples.labels[1, 10:] = 1  # car, only in the second image
        run.samples.predictions[:] = prediction  # sign, car
    figure = _qualitative_figure(runs, _palette(), max_samples=2)
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["road", "car", "sign", "ignore"]
    colours = [tuple(round(255 * c) for c in h.get_facecolor()[:3]) for h in legend.legend_handles]
    assert colours[:3] == [tuple(c) for c in _palette()[:3]]
    # The legend lies under the image grid, covering none of it.
    FigureCanvasAgg(figure).draw()
    box = legend.get_window_extent()
    assert all(box.y1 <= axes.get_window_extent().y0 for axes in figure.axes)
    # Only the shown images count: with one sample, car (second image only) is left out.
    (one,) = _qualitative_figure(runs[:1], _palette(), max_samples=1).legends
    assert [t.get_text() for t in one.get_texts()] == ["road", "sign", "ignore"]


def test_legend_classes_names_ids_past_the_list_and_ignore() -> None:
    maps = [np.array([[3, 0], [255, 0]], np.uint8), np.array([[7]], np.uint8)]
    assert legend_classes(maps, CLASSES) == [(0, "road"), (3, "bike"), (7, "id 7"), (255, "ignore")]


def _stage_run(root: Path, name: str, iterations: int, init_from: str | None = None) -> Path:
    """A run folder of `iterations` steps (a line every 100), started from `init_from`."""
    folder = root / name
    folder.mkdir(parents=True)
    config = {"method": {"name": name}, "model": {"init_from": init_from}}
    config["train"] = {"iterations": iterations}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [
        {"kind": "train", "iteration": i, "time": 0.1, "values": {"loss/seg": 1.0 / i}}
        for i in range(100, iterations + 1, 100)
    ]
    lines.append({"kind": "eval", "iteration": iterations, "miou": 20.0, "head_miou": 30.0})
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_curves_draw_a_run_after_the_run_it_started_from(tmp_path: Path) -> None:
    step1 = _stage_run(tmp_path, "step1", 1000)
    apoda = _stage_run(tmp_path, "apoda", 200, str(step1 / "checkpoints" / "last.pt"))
    runs = [read_run(apoda), read_run(step1)]  # order of the arguments does not matter
    starts = run_starts(runs)
    assert [s.offset for s in starts] == [1000, 0]
    assert starts[0].after == "step1" and starts[1].after is None
    figure = _curves_figure(runs)
    for axes in figure.axes:
        assert axes.get_xlabel() == "total training iterations"
        lines = {line.get_label(): line.get_xdata() for line in axes.get_lines()}
        assert min(lines["apoda"]) >= 1000 and max(lines["apoda"]) == 1200
        assert max(lines["step1"]) == 1000
        stage = [line for line in axes.get_lines() if line.get_gid() == "stage-start"]
        assert stage and all(list(line.get_xdata()) == [1000, 1000] for line in stage)
    assert figure.get_suptitle() == "apoda start from step1 (at iteration 1000, dotted line)"


def test_run_starts_follow_chains_folders_on_disk_and_best_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step1 = _stage_run(tmp_path, "step1", 1000)
    metrics = {"iteration": 600, "selection": "oracle-best", "per_class": {}}
    (step1 / "metrics.json").write_text(json.dumps(metrics))
    from_best = _stage_run(tmp_path, "from_best", 200, str(step1 / "checkpoints" / "best.pt"))
    monkeypatch.chdir(tmp_path)  # a relative init_from: a run folder, its last checkpoint
    second = _stage_run(tmp_path, "second", 300, "from_best")
    lost = _stage_run(tmp_path, "lost", 100, str(tmp_path / "gone" / "checkpoints" / "last.pt"))
    # step1 is not among the runs given: it is read from its folder.
    starts = run_starts([read_run(p) for p in (from_best, second, lost)])
    assert [s.offset for s in starts] == [600, 800, 0]
    assert [s.after for s in starts] == ["step1", "from_best", None]
    assert starts[2].missing is not None and "gone" in starts[2].missing
    figure = _curves_figure([read_run(lost)])
    assert "lost: start" in figure.get_suptitle() and "drawn from 0" in figure.get_suptitle()


def _tiny_minicity_config() -> dict[str, Any]:
    config = config_to_dict(Config())
    config["data"]["minicity"].update(
        n_source=16, n_target_train=16, n_target_val=8, height=32, width=64
    )
    return config


def test_class_distribution_draws_the_targets_labelled_val_split(tmp_path: Path) -> None:
    folder = _make_run(tmp_path, "run", [50.0, 40.0, 30.0, 20.0], samples=False)
    (folder / "stats" / "target.json").unlink()  # as runs of apoda 0.2 left it: source only
    (folder / "config.yaml").write_text(yaml.safe_dump(_tiny_minicity_config()))
    found = domain_stats([read_run(folder)])
    assert found is not None and found.target_missing is None
    labels = list(found.stats)
    assert labels == ["source: source train (3 images)", "target: minicity val (8 images)"]
    target = found.stats[labels[1]]
    assert target["split"] == "val" and target["tail_classes"] == TAIL  # evaluation's tail
    assert abs(sum(target["pixel_fraction"].values()) - 1.0) < 1e-6
    figure = _class_distribution_figure(found.stats)
    (axes,) = figure.axes
    assert len(axes.containers) == 2  # one set of bars per domain
    assert [t.get_text() for t in axes.get_legend().get_texts()] == labels
    text = write_report([read_run(folder)], tmp_path / "out").read_text()
    assert "the target is its labelled val split, the images evaluation scores" in text


@pytest.mark.parametrize("data", [None, {"target": "cityscapes", "target_root": "/nonexistent"}])
def test_class_distribution_without_target_stats_says_source_only(
    tmp_path: Path, data: dict[str, Any] | None
) -> None:
    folder = _make_run(tmp_path, "own", [50.0, 40.0, 30.0, 20.0], samples=False)
    (folder / "stats" / "target.json").unlink()
    if data is not None:
        config = _tiny_minicity_config()
        config["data"].update(data)
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    found = domain_stats([read_run(folder)])
    assert found is not None and list(found.stats) == ["source: source train (3 images)"]
    assert found.target_missing
    assert len(_class_distribution_figure(found.stats).axes[0].containers) == 1
    text = write_report([read_run(folder)], tmp_path / "out").read_text()
    assert "Only the source is drawn: there are no target class statistics for own" in text
    assert "](class_distribution.png)" in text


def test_per_class_iou_prints_values_and_marks_near_zero_bars_and_tail(tmp_path: Path) -> None:
    runs = [
        read_run(_make_run(tmp_path, "a", [90.0, 0.0, 0.4, None], samples=False)),
        read_run(_make_run(tmp_path, "b", [80.0, 60.0, 1.0, 2.5], samples=False)),
    ]
    assert near_zero([0.0, 0.4, 1.0, math.nan, 55.0]) == [True, True, False, False, False]
    figure = _per_class_iou_figure(runs)
    (axes,) = figure.axes
    texts = [t.get_text() for t in axes.texts]
    assert texts == ["90.0", "0.0", "0.4", "n/a", "80.0", "60.0", "1.0", "2.5"]
    marked = [line for line in axes.get_lines() if line.get_gid() == "near-zero"]
    assert len(marked) == 1 and len(marked[0].get_xdata()) == 2  # run a's car and sign
    bars = axes.containers[0]
    np.testing.assert_allclose(
        marked[0].get_xdata(), [bars[1].get_center()[0], bars[2].get_center()[0]]
    )
    ticks = [t.get_text() for t in axes.get_xticklabels()]
    assert ticks == ["road", "car", "sign*", "bike*"]


# --------------------------------------------------------------------------- pseudo-labels


def _probe_record(step: int, labelled: bool) -> dict[str, Any]:
    """The `pseudo_labels` entry of the `step`-th evaluation (as PseudoLabelProbe.measure)."""
    record: dict[str, Any] = {
        "images": 8,
        "agreement": None if step == 0 else 0.9 + 0.02 * step,
        "confident_share": 0.3 + 0.05 * step,
        "settled_at": 30 if step >= 2 else None,
    }
    if labelled:
        record["accuracy"] = 0.7 + 0.02 * step
        record["per_class"] = {
            "road": {"precision": 0.9, "recall": 0.95, "labelled_share": 0.6, "true_share": 0.55},
            "car": {"precision": 0.7, "recall": 0.6, "labelled_share": 0.3, "true_share": 0.3},
            "sign": {  # under-predicted, better over training
                "precision": 0.2 + 0.1 * step,
                "recall": 0.1,
                "labelled_share": 0.01 * (step + 1),
                "true_share": 0.1,
            },
            "bike": {  # never pseudo-labelled
                "precision": None,
                "recall": 0.0,
                "labelled_share": 0.0,
                "true_share": 0.05,
            },
        }
    return record


def _probe_run(root: Path, name: str, labelled: bool = True, metrics: bool = True) -> Path:
    """A self-training run folder whose evaluations (10, 20, 30, 40) logged the probe."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "dacs"}}))
    if metrics:
        summary = {"class_names": CLASSES, "tail_classes": TAIL, "per_class": {}}
        (folder / "metrics.json").write_text(json.dumps(summary))
    lines = [
        {
            "kind": "eval",
            "iteration": 10 * (step + 1),
            "miou": 20.0,
            "pseudo_labels": _probe_record(step, labelled),
        }
        for step in range(4)
    ]
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_report_draws_pseudo_labels_of_the_runs_that_logged_them(tmp_path: Path) -> None:
    probed = _probe_run(tmp_path / "runs", "dacs")
    plain = _make_run(tmp_path / "runs", "source_only", [1.0, 2.0, 3.0, 4.0], method="source")
    runs = [read_run(plain), read_run(probed)]
    out = tmp_path / "report"
    text = write_report(runs, out).read_text()
    _assert_png(out / "pseudo_labels.png")
    link = "### Pseudo-labels over training\n\n![Pseudo-labels over training](pseudo_labels.png)"
    assert link in text
    picture = text.split("### Pseudo-labels over training", 1)[1]
    assert "How to read this: At each evaluation the teacher labels" in picture
    assert "labelled share / true share" in picture and "first (light) and last (solid)" in picture
    assert NO_PROBE not in text

    figure = _pseudo_labels_figure(runs)
    agreement, confident, precision, shares = figure.axes
    # only the run with probes, in its colour of the other pictures (the second run: C1)
    for panel in (agreement, confident):
        data = [line for line in panel.get_lines() if line.get_gid() is None]
        assert [line.get_label() for line in data] == ["dacs"]
        assert data[0].get_color() == "C1"
        settled = [line for line in panel.get_lines() if line.get_gid() == "settled"]
        assert len(settled) == 1 and list(settled[0].get_xdata()) == [30, 30]
        assert "settled at 30" in settled[0].get_label()
    agreement_line = agreement.get_lines()[0]
    assert list(agreement_line.get_xdata()) == [10, 20, 30, 40]
    assert np.isnan(agreement_line.get_ydata()[0])  # no agreement at the first evaluation
    curves = {line.get_label(): line for line in precision.get_lines()}
    assert set(curves) >= {"sign*", "head classes (mean)"} and "bike*" not in curves
    np.testing.assert_allclose(curves["head classes (mean)"].get_ydata(), [0.8] * 4)
    assert any("never pseudo-labelled: bike*" in t.get_text() for t in precision.texts)
    assert shares.get_yscale() == "log"
    assert [t.get_text() for t in shares.get_xticklabels()] == ["sign*", "bike*"]
    heights = sorted(
        round(b.get_height(), 6) for b in shares.patches if np.isfinite(b.get_height())
    )
    assert heights == [0.1, 0.4]  # sign: 0.01 / 0.1 at the first, 0.04 / 0.1 at the last
    assert sum(t.get_text() == "0" for t in shares.texts) == 2  # bike, never labelled


def test_report_without_pseudo_labels_says_why(tmp_path: Path) -> None:
    folder = _make_run(tmp_path, "apoda", [1.0, 2.0, 3.0, 4.0], samples=False)
    text = write_report([read_run(folder)], tmp_path / "out").read_text()
    assert f"### Pseudo-labels over training\n\n_Not drawn: {NO_PROBE}._" in text
    assert not (tmp_path / "out" / "pseudo_labels.png").exists()
    with pytest.raises(ApodaError, match="pseudo-label probes"):
        plot_pseudo_labels([read_run(folder)], tmp_path / "p.png")


def test_pseudo_labels_of_an_unlabelled_target_draw_the_first_panels(tmp_path: Path) -> None:
    run = read_run(_probe_run(tmp_path, "dacs", labelled=False))
    _assert_png(plot_pseudo_labels([run], tmp_path / "pseudo_labels.png"))
    agreement, confident = _pseudo_labels_figure([run]).axes  # no per-class row
    assert [round(v, 6) for v in confident.get_lines()[0].get_ydata()] == [0.3, 0.35, 0.4, 0.45]
    assert agreement.get_xlabel() == "total training iterations"


def test_run_tail_of_a_run_still_training_comes_from_its_checkpoint(tmp_path: Path) -> None:
    import torch

    folder = _probe_run(tmp_path, "dacs", metrics=False)
    assert run_tail(read_run(folder)) == []
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"tail_classes": ["car"]}}))
    assert run_tail(read_run(folder)) == ["car"]
    (folder / "checkpoints").mkdir()
    torch.save({"iteration": 40, "tail_classes": TAIL}, folder / "checkpoints" / "last.pt")
    assert run_tail(read_run(folder)) == TAIL
    precision = _pseudo_labels_figure([read_run(folder)]).axes[2]
    assert "sign*" in {line.get_label() for line in precision.get_lines()}
