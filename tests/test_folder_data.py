"""Folder datasets of one's own classes: classes.yaml, `apoda data check`, training source only
and APODA on 3 and 7 classes (index and colour labels), eval, predict with the checkpoint's
class list, report, suites, and the MiniCity example written as folders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from apoda.checkpoints import load_checkpoint
from apoda.cli import main
from apoda.config import load_config_data
from apoda.data.folder import FolderDataset, parse_classes, read_classes
from apoda.data.minicity import MiniCityConfig, ensure_minicity
from apoda.data.minicity.folder_export import CATEGORIES, write_minicity_folder
from apoda.errors import ApodaError
from apoda.inference import checkpoint_classes
from apoda.suites import STEP1, Row, run_suite

THREE = {"road": [128, 64, 128], "car": [0, 0, 142], "sky": [70, 130, 180]}
SEVEN = {name: list(color) for name, color in CATEGORIES.items()}
SIZE = (64, 32)  # width, height
FAST = [
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "train.iterations=2",
    "train.eval_every=0",
    "train.progress=false",
    "train.samples=2",
]


def _class_map(count: int, index: int) -> np.ndarray:
    """[H, W] class positions: a vertical band per class, shifted by the image's index, and an
    unlabelled corner."""
    width, height = SIZE
    columns = (np.arange(width) * count // width + index) % count
    positions = np.tile(columns, (height, 1)).astype(np.int64)
    positions[:2, :2] = -1
    return positions


def write_folder(
    root: Path,
    colors: dict[str, list[int]],
    encoding: str = "index",
    splits: dict[str, tuple[int, bool]] | None = None,
) -> Path:
    """A folder dataset: images coloured like their classes (plus noise), index labels (class i
    stored as 10 + i, ignore 255) or colour labels (ignore black), and its classes.yaml."""
    names = list(colors)
    if encoding == "index":
        entries = [{"name": n, "index": 10 + i, "color": colors[n]} for i, n in enumerate(names)]
        data = {"labels": "index", "ignore": 255, "classes": entries}
    else:
        data = {"labels": "color", "classes": [{"name": n, "color": colors[n]} for n in names]}
    root.mkdir(parents=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    rng = np.random.default_rng(len(names))
    palette = np.asarray([colors[n] for n in names] + [[0, 0, 0]], dtype=np.int64)
    for split, (count, labelled) in (splits or {"train": (8, True), "val": (4, True)}).items():
        for folder in ("images", "labels") if labelled else ("images",):
            (root / folder / split).mkdir(parents=True)
        for k in range(count):
            positions = _class_map(len(names), k)
            noise = rng.integers(-20, 20, size=(*positions.shape, 3))
            image = np.clip(palette[positions] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{k:03d}.png")
            if not labelled:
                continue
            if encoding == "index":
                label = np.where(positions >= 0, positions + 10, 255).astype(np.uint8)
            else:
                label = palette[positions].astype(np.uint8)
            Image.fromarray(label).save(root / "labels" / split / f"{k:03d}.png")
    return root


def _roots(root: Path) -> list[str]:
    return [f"data.source_root={root / 'source'}", f"data.target_root={root / 'target'}"]


def _domains(tmp: Path, colors: dict[str, list[int]], encoding: str) -> Path:
    """A source (train, labelled) and a target (train unlabelled, val labelled)."""
    write_folder(tmp / "source", colors, encoding, {"train": (8, True)})
    write_folder(tmp / "target", colors, encoding, {"train": (8, False), "val": (4, True)})
    return tmp


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- classes.yaml ---------------------------------------------------------------------------------
def test_index_and_colour_class_lists_decode_labels_and_round_trip() -> None:
    index = parse_classes(
        {"ignore": 0, "classes": [{"name": "a", "index": 7}, {"name": "b", "index": 3}]}, "x"
    )
    raw = np.array([[7, 3, 0, 9]], dtype=np.uint8)
    indices, unknown = index.decode(raw)
    assert indices.tolist() == [[0, 1, 255, 255]] and unknown.tolist() == [9]
    assert len(set(index.colors)) == 2  # colours made up for classes without one
    again = parse_classes(index.to_dict(), "y")
    assert again.to_dict() == index.to_dict() and again.digest == index.digest

    colour = parse_classes(
        {"labels": "color", "classes": [{"name": n, "color": c} for n, c in THREE.items()]}, "x"
    )
    raw = np.array([[[0, 0, 142], [0, 0, 0], [1, 2, 3]]], dtype=np.uint8)
    indices, unknown = colour.decode(raw)
    assert indices.tolist() == [[1, 255, 255]]
    assert [colour.value(int(c)) for c in unknown] == [(1, 2, 3)]
    assert colour.scheme.colors == tuple(tuple(c) for c in THREE.values())


BAD_CLASSES = [
    ("classes: [{name: a, index: 0}]\n", "classes: expected a list of 2 to 255 classes"),
    ("labels: index\n", "classes: expected a list of 2 to 255 classes, got None"),
    ("colour: x\nclasses: []\n", "unknown key 'colour'; valid: labels, ignore, classes, tail"),
    ("labels: rgb\nclasses: []\n", "labels: expected index or color, got 'rgb'"),
    ("classes: [{name: a, index: 0}, {name: b, index: 300}]\n", "classes[1].index: expected an"),
    ("classes: [{name: a, index: 0}, {name: b}]\n", "classes[1].index: expected one for every"),
    ("classes: [{name: a, index: 0}, {name: a, index: 1}]\n", "classes[1].name: 'a' is also"),
    ("classes: [{name: a, index: 0}, {name: b, index: 0}]\n", "classes[1]: its value 0 is also"),
    ("classes: [{name: a, index: 0}, {name: b, index: 255}]\n", "classes[1]: its value 255 is"),
    ("classes: [{name: a, index: 0}, {name: b, index: 1, colour: red}]\n", "classes[1].colour:"),
    ("classes: [{name: a, index: 0}, {name: b, index: 1, color: [1, 2]}]\n", "classes[1].color:"),
    (
        "labels: color\nclasses: [{name: a, index: 0, color: [1, 1, 1]}, {name: b}]\n",
        "classes[0].index: expected only the keys name, color (labels: color)",
    ),
    ("classes: [{name: a, index: 0}, {name: b, index: 1}]\ntail: [c]\n", "tail: 'c' is not a"),
    ("classes: [a, b\n", "is not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CLASSES)
def test_a_bad_classes_yaml_is_one_line_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    root = write_folder(tmp_path / "data", THREE)
    (root / "classes.yaml").write_text(text)
    code, _, err = _cli(["data", "check", str(root)], capsys)
    assert code == 2
    line = err.strip()
    assert "\n" not in line and line.startswith(f"error: {root / 'classes.yaml'}"), line
    assert message in line


def test_a_folder_without_classes_yaml_is_an_error(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", THREE)
    (root / "classes.yaml").unlink()
    with pytest.raises(ApodaError, match=r"classes\.yaml does not exist"):
        read_classes(root)


# -- apoda data check -----------------------------------------------------------------------------
def test_a_clean_folder_checks_with_counts_sizes_and_fractions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_folder(tmp_path / "data", SEVEN, "color", {"train": (7, True), "val": (3, True)})
    code, out, _ = _cli(["data", "check", str(root)], capsys)
    assert code == 0, out
    assert "7 classes (color labels)" in out and "| images | 7 | 3 |" in out
    assert "| image sizes | 64x32 | 64x32 |" in out
    assert "| flat | 14." in out and "| problems | 0 | 0 |" in out and "0 problems" in out


def test_data_stats_reads_a_folder_with_its_own_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_folder(tmp_path / "data", THREE, "index", {"train": (4, True), "val": (2, True)})
    out = tmp_path / "stats.json"
    code, _, err = _cli(["data", "stats", "folder", str(root), "--out", str(out)], capsys)
    assert code == 0, err
    stats = json.loads(out.read_text())
    assert (stats["split"], stats["class_names"]) == ("val", list(THREE))
    code, _, err = _cli(["data", "stats", "folder", str(root), "--scheme", "synthia16"], capsys)
    assert code == 2 and "--scheme: folder names its own classes" in err


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(array, mode).save(path)


def _sixteen_bit(path: Path) -> None:
    import cv2

    cv2.imwrite(str(path), np.full((32, 64), 300, dtype=np.uint16))


PROBLEMS: list[tuple[str, Callable[[Path], None], str]] = [  # each makes one problem
    (
        "size",
        lambda r: _save(r / "labels/train/001.png", np.full((16, 32), 10, np.uint8)),
        "labels/train/001.png: label of 32x16 but its image 001.png is 64x32",
    ),
    (
        "values",
        lambda r: _save(r / "labels/train/002.png", np.full((32, 64), 77, np.uint8)),
        "labels/train/002.png: 2048 pixels of values not in classes.yaml (77)",
    ),
    (
        "unreadable",
        lambda r: (r / "images/val/001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"),
        "images/val/001.png: unreadable",
    ),
    (
        "truncated",
        lambda r: (r / "labels/val/002.png").write_bytes(
            (r / "labels/val/002.png").read_bytes()[:60]
        ),
        "labels/val/002.png: unreadable",
    ),
    ("16-bit label", lambda r: _sixteen_bit(r / "labels/train/003.png"), "003.png: a 16-bit label"),
    ("16-bit image", lambda r: _sixteen_bit(r / "images/train/004.png"), "004.png: a 16-bit image"),
    (
        "no label",
        lambda r: (r / "labels/train/005.png").unlink(),
        "images/train/005.png: image without a label",
    ),
    (
        "no image",
        lambda r: (r / "images/train/006.png").unlink(),
        "labels/train/006.png: label without an image",
    ),
    (
        "rgb label",
        lambda r: _save(r / "labels/train/007.png", np.zeros((32, 64, 3), np.uint8)),
        "labels/train/007.png: a RGB label; ",
    ),
    (
        "jpeg label",
        lambda r: _save(r / "labels/train/extra.jpg", np.full((32, 64), 10, np.uint8)),
        "labels/train/extra.jpg: a .jpg label; labels must be PNG",
    ),
    (
        "outside a split",
        lambda r: _save(r / "images/loose.png", np.zeros((32, 64, 3), np.uint8)),
        "images/loose.png: not in a split folder",
    ),
]


@pytest.mark.parametrize(
    ("breaking", "message"), [p[1:] for p in PROBLEMS], ids=[p[0] for p in PROBLEMS]
)
def test_data_check_names_each_problem_with_its_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breaking: Callable[[Path], None],
    message: str,
) -> None:
    root = write_folder(tmp_path / "data", THREE)
    breaking(root)
    code, out, _ = _cli(["data", "check", str(root)], capsys)
    assert code == 1, out
    assert message in out, out
    assert "\n1 problem\n" in out, out


def test_a_colour_not_in_classes_yaml_is_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_folder(tmp_path / "data", THREE, "color")
    _save(root / "labels/val/000.png", np.full((32, 64, 3), 9, np.uint8))
    code, out, _ = _cli(["data", "check", str(root)], capsys)
    assert code == 1
    assert "labels/val/000.png: 2048 pixels of values not in classes.yaml ((9, 9, 9))" in out


# -- training, evaluation, prediction, report -----------------------------------------------------
@pytest.mark.parametrize(("colors", "encoding"), [(THREE, "index"), (SEVEN, "color")])
def test_source_only_then_apoda_on_folders_then_eval_predict_report(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    colors: dict[str, list[int]],
    encoding: str,
) -> None:
    data = _domains(tmp_path / "data", colors, encoding)
    so, apoda = tmp_path / "so", tmp_path / "apoda"
    train = ["train", "folder/source_only", *_roots(data), *FAST, "--out", str(so)]
    assert _cli(train, capsys)[0] == 0
    step23 = [*_roots(data), *FAST, f"model.init_from={so}", "--out", str(apoda)]
    assert _cli(["train", "folder/apoda", *step23], capsys)[0] == 0

    names = list(colors)
    metrics = json.loads((apoda / "metrics.json").read_text())
    assert metrics["class_names"] == names and metrics["num_classes"] == len(names)
    assert metrics["class_colors"] == list(colors.values())
    state = load_checkpoint(apoda / "checkpoints/last.pt")
    assert state["modules"]["segmenter"]["head.conv2d_list.0.weight"].shape[0] == len(names)
    assert state["modules"]["discriminator"]["conv1.weight"].shape[1] == len(names)
    assert [c["name"] for c in state["classes"]["classes"]] == names
    assert state["classes"]["labels"] == encoding

    code, out, _ = _cli(
        ["eval", str(apoda), "--data", "folder", "--root", str(data / "target")], capsys
    )
    assert code == 0 and all(f"| {name} |" in out for name in names[1:]), out
    evaluated = json.loads((apoda / "eval-folder-val" / "metrics.json").read_text())
    assert evaluated["miou"] == pytest.approx(metrics["miou"])

    out_dir = tmp_path / "pred"
    assert (
        _cli(
            ["predict", str(apoda), str(data / "target/images/val"), "--out", str(out_dir)], capsys
        )[0]
        == 0
    )
    ids = np.asarray(Image.open(out_dir / "000_labelTrainIds.png"))
    painted = np.asarray(Image.open(out_dir / "000_labels.png").convert("RGB"))
    palette = np.asarray(list(colors.values()), dtype=np.uint8)
    assert (painted == palette[ids]).all()
    assert read_classes(out_dir / "classes.yaml").names == tuple(names)

    code, _, _ = _cli(["report", str(so), str(apoda), "--out", str(tmp_path / "report")], capsys)
    assert code == 0 and (tmp_path / "report" / "qualitative.png").is_file()


def test_tail_classes_from_classes_yaml_and_a_target_that_disagrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _domains(tmp_path / "data", THREE, "index")
    classes = yaml.safe_load((data / "source/classes.yaml").read_text())
    (data / "source/classes.yaml").write_text(yaml.safe_dump({**classes, "tail": ["car"]}))
    run = tmp_path / "run"
    assert (
        _cli(["train", "folder/source_only", *_roots(data), *FAST, "--out", str(run)], capsys)[0]
        == 0
    )
    assert json.loads((run / "metrics.json").read_text())["tail_classes"] == ["car"]

    classes["classes"] = classes["classes"][::-1]
    (data / "target/classes.yaml").write_text(yaml.safe_dump(classes))
    code, _, err = _cli(
        ["train", "folder/source_only", *_roots(data), *FAST, "--out", str(tmp_path / "x")], capsys
    )
    assert code == 2 and "the class lists must agree" in err and "target/classes.yaml" in err
    # scoring the run there names the checkpoint's list once
    code, _, err = _cli(
        ["eval", str(run), "--data", "folder", "--root", str(data / "target")], capsys
    )
    assert code == 2 and f"but the class list of checkpoint {run}" in err, err
    assert "class list of the class list" not in err


def test_training_refuses_a_folder_that_fails_the_check_before_any_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _domains(tmp_path / "data", THREE, "index")
    (data / "source/images/train/003.png").unlink()
    _save(data / "source/labels/train/004.png", np.full((8, 8), 10, np.uint8))
    run = tmp_path / "run"
    code, _, err = _cli(
        ["train", "folder/source_only", *_roots(data), *FAST, "--out", str(run)], capsys
    )
    assert code == 2
    assert f"{data / 'source'} fails the data check with 2 problems" in err
    assert "labels/train/003.png: label without an image" in err
    assert "labels/train/004.png: label of 8x8 but its image 004.png is 64x32" in err
    assert not (run / "checkpoints").exists()


def test_images_of_several_sizes_need_a_size_to_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _domains(tmp_path / "data", THREE, "index")
    _save(data / "source/images/train/000.png", np.zeros((16, 32, 3), np.uint8))
    _save(data / "source/labels/train/000.png", np.full((16, 32), 10, np.uint8))
    args = ["train", "folder/source_only", *_roots(data), *FAST]
    code, _, err = _cli([*args, "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "images of 2 sizes (64x32 (7), 32x16 (1)); set data.source_size" in err
    assert _cli([*args, "data.source_size=[64,32]", "--out", str(tmp_path / "b")], capsys)[0] == 0


def test_an_init_checkpoint_of_other_classes_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _domains(tmp_path / "data", THREE, "index")
    other = _domains(tmp_path / "other", {"a": [1, 1, 1], "b": [2, 2, 2], "c": [3, 3, 3]}, "index")
    so = tmp_path / "so"
    assert (
        _cli(["train", "folder/source_only", *_roots(data), *FAST, "--out", str(so)], capsys)[0]
        == 0
    )
    args = ["train", "folder/apoda", *_roots(other), *FAST, f"model.init_from={so}"]
    code, _, err = _cli([*args, "--out", str(tmp_path / "apoda")], capsys)
    assert code == 2 and "was trained on the classes ['road', 'car', 'sky']" in err


def test_checkpoints_without_a_class_list_fall_back_to_their_scheme(tmp_path: Path) -> None:
    from apoda.config import Config

    classes = checkpoint_classes({}, Config(), tmp_path / "old.pt")
    assert classes.names[0] == "road" and len(classes.names) == 19 and classes.ignore == 255


def test_a_suite_runs_on_folder_data(tmp_path: Path) -> None:
    data = _domains(tmp_path / "data", THREE, "index")
    rows = (STEP1, Row("apoda", "APODA", "apoda"))
    result = run_suite(
        "mini", tmp_path / "suite", data="folder", overrides=[*_roots(data), *FAST], rows=rows
    )
    assert result is not None
    table = (tmp_path / "suite" / "table.md").read_text()
    assert "| method | road | car | sky |" in table.replace("**", "")


def test_a_base_list_merges_left_to_right(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ndata:\n  batch_size: 2\n  flip: true\n")
    (tmp_path / "b.yaml").write_text("data:\n  batch_size: 3\n")
    (tmp_path / "c.yaml").write_text("_base_: [a.yaml, b.yaml]\nname: c\n")
    assert load_config_data(tmp_path / "c.yaml") == {
        "name": "c",
        "data": {"batch_size": 3, "flip": True},
    }


# -- the worked example ---------------------------------------------------------------------------
def test_minicity_as_folders_checks_clean_and_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], apoda_cache: Path
) -> None:
    tiny = MiniCityConfig(n_source=16, n_target_train=16, n_target_val=8, height=32, width=64)
    out = tmp_path / "folders"
    source, target = write_minicity_folder(ensure_minicity(tiny), out, progress=False)
    assert read_classes(source).names == tuple(CATEGORIES)
    assert not (target / "labels/train").exists()
    for root in (source, target):
        code, out_text, _ = _cli(["data", "check", str(root)], capsys)
        assert code == 0, out_text
    dataset = FolderDataset(target, read_classes(target), split="val")
    assert set(np.unique(dataset.read_label(0)).tolist()) <= {*range(7), 255}
    write_minicity_folder(ensure_minicity(tiny), out, progress=False)  # an earlier export: redone
    run = tmp_path / "run"
    args = ["train", "folder/source_only", *_roots(out), *FAST, "--out", str(run)]
    assert _cli(args, capsys)[0] == 0
    assert isinstance(torch.load(run / "checkpoints/last.pt", weights_only=True)["classes"], dict)
    (tmp_path / "mine" / "source").mkdir(parents=True)
    with pytest.raises(ApodaError, match=r"mine/source exists and is not a folder dataset written"):
        write_minicity_folder(ensure_minicity(tiny), tmp_path / "mine", progress=False)
