"""`apoda predict`: recursive folders, unique output names, earlier outputs skipped, unreadable
images reported without stopping the rest, label-id PNGs, and an unwritable --out refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apoda.cli import main
from apoda.data import get_scheme
from apoda.prediction import is_prediction_output, output_names

OUTPUTS = ("_labelTrainIds.png", "_labels.png", "_overlay.png")


@pytest.fixture(scope="module")
def run(one_iteration_run: Path) -> Path:
    """The shared one-iteration run (conftest): only read here."""
    return one_iteration_run


def _image(path: Path, size: tuple[int, int] = (40, 24), value: int = 120) -> Path:
    """Write an RGB image (PNG or JPEG by the suffix) of size (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _outputs(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def test_nested_folders_keep_their_paths_and_colliding_stems_stay_apart(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames"
    _image(frames / "street.png", (40, 24), 1)
    _image(frames / "street.jpg", (48, 20), 2)
    _image(frames / "sub" / "deeper" / "lane.PNG", (30, 18), 3)
    (frames / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"

    assert main(["predict", str(run), str(frames), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"predicted 3 images into {out} (label ids, colours, overlays)" in captured.out
    assert captured.err == ""
    expected = [f"{name}{s}" for name in ("street.jpg", "street.png") for s in OUTPUTS]
    expected += [f"sub/deeper/lane{s}" for s in OUTPUTS]
    assert _outputs(out) == sorted(expected)

    scheme = get_scheme("cityscapes19")
    colours = np.asarray(scheme.colors, dtype=np.uint8)
    for name, size in (
        ("street.png", (40, 24)),
        ("street.jpg", (48, 20)),
        ("sub/deeper/lane", (30, 18)),
    ):
        ids_image = Image.open(out / f"{name}_labelTrainIds.png")
        assert ids_image.mode == "L" and ids_image.size == size  # 8-bit, the input's resolution
        ids = np.asarray(ids_image)
        assert ids.max() < scheme.num_classes  # train ids; prediction never writes 255
        colour = np.asarray(Image.open(out / f"{name}_labels.png").convert("RGB"))
        assert (colour == colours[ids]).all()  # the colour map is the same prediction
        assert Image.open(out / f"{name}_overlay.png").size == size


def test_a_single_image_file(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path / "in" / "frame.jpg")
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(image), "--out", str(out)]) == 0
    assert "predicted 1 image into" in capsys.readouterr().out
    assert _outputs(out) == sorted(f"frame{s}" for s in OUTPUTS)


def test_running_twice_with_out_inside_the_input_skips_its_own_outputs(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames"
    _image(frames / "a.png")
    _image(frames / "sub" / "b.jpg")
    out = frames / "pred"
    args = ["predict", str(run), str(frames), "--out", str(out)]
    assert main(args) == 0
    assert "predicted 2 images" in capsys.readouterr().out
    first = _outputs(out)
    assert len(first) == 6

    # An earlier output moved beside the inputs is skipped by its name, too.
    (frames / "old_overlay.png").write_bytes((out / "a_overlay.png").read_bytes())
    assert main(args) == 0
    captured = capsys.readouterr().out
    assert "predicted 2 images" in captured
    assert "skipped 7 earlier prediction outputs" in captured  # 6 in pred/, 1 by name
    assert _outputs(out) == first  # nothing like a_labels_labels.png
    assert not list(frames.rglob("*_labels_labels.png"))


def test_out_equal_to_the_input_folder_writes_beside_the_images(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames"
    _image(frames / "a.png")
    args = ["predict", str(run), str(frames), "--out", str(frames)]
    for skipped in (0, 3):
        assert main(args) == 0
        captured = capsys.readouterr().out
        assert "predicted 1 image into" in captured
        assert (f"skipped {skipped} earlier" in captured) == (skipped > 0)
    assert _outputs(frames) == sorted(["a.png", *(f"a{s}" for s in OUTPUTS)])


def test_an_unreadable_image_is_reported_and_the_others_are_predicted(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames"
    _image(frames / "a.png")
    (frames / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (frames / "c_empty.jpg").write_bytes(b"")
    _image(frames / "d.jpg")
    out = tmp_path / "pred"

    assert main(["predict", str(run), str(frames), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "predicted 2 images into" in captured.out
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3
    assert errors[0].startswith(f"error: cannot read {frames / 'b_broken.png'}: ")
    assert errors[1].startswith(f"error: cannot read {frames / 'c_empty.jpg'}: ")
    assert errors[2] == "2 images could not be read"
    assert _outputs(out) == sorted(f"{n}{s}" for n in ("a", "d") for s in OUTPUTS)


def _no_model(*args: object) -> None:
    raise AssertionError("the model was loaded before --out was checked")


def _model_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A run path whose model must not be loaded, and a folder with one image."""
    monkeypatch.setattr("apoda.prediction.load_segmenter", _no_model)
    frames = tmp_path / "frames"
    _image(frames / "a.png")
    return tmp_path / "no-run", frames


def test_an_out_that_cannot_be_created_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, frames = _model_never_loaded(tmp_path, monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker, blocker / "pred"):  # a file; a folder that cannot be created
        assert main(["predict", str(run), str(frames), "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1 and str(out) in captured.err


def test_a_read_only_out_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, frames = _model_never_loaded(tmp_path, monkeypatch)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable")
        assert main(["predict", str(run), str(frames), "--out", str(read_only)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"error: output folder {read_only} cannot be written")
        assert captured.err.count("\n") == 1
        assert not list(read_only.iterdir())
    finally:
        read_only.chmod(0o755)


def test_a_folder_without_images_is_an_error(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "x_labels.png").write_bytes(b"")
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(frames), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no .png/.jpg/.jpeg images in" in err and "(1 earlier prediction output skipped)" in err
    assert not out.exists()  # nothing created before the input was found usable


def test_output_names_never_collide() -> None:
    files = [
        Path(n)
        for n in (
            "street.png",
            "street.jpg",
            "Street.JPEG",
            "street.jpg.png",  # its stem is the other's full name
            "street.jpg~2.png",  # its stem is the numbered fallback
            "lane.png",
            "a_b.png",
            "a.b.png",
        )
    ]
    names = output_names(files)
    assert len({n.lower() for n in names.values()}) == len(files)
    assert names[Path("lane.png")] == "lane"  # a unique stem is kept as it is
    assert names[Path("a_b.png")] == "a_b" and names[Path("a.b.png")] == "a.b"
    assert names[Path("street.png")] == "street.png"  # colliding stems keep their extension
    assert names[Path("street.jpg~2.png")] == "street.jpg~2"
    assert {names[Path("street.jpg")], names[Path("street.jpg.png")]} == {
        "street.jpg~3",
        "street.jpg~4",
    }
    # NAMEs already taken (a subfolder named like an output) are avoided as well.
    assert output_names([Path("x.png")], {"x"}) == {Path("x.png"): "x~2"}


def test_outputs_are_recognised_by_name() -> None:
    assert is_prediction_output("a_labels.png") and is_prediction_output("A_LABELTRAINIDS.PNG")
    assert is_prediction_output("dir/a_overlay.png")
    assert not is_prediction_output("labels.png") and not is_prediction_output("a_labels.jpg")
