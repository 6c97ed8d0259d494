"""`apoda export`: ONNX and TorchScript files of a checkpoint's segmenter, checked against
PyTorch within the printed float32 tolerance; a corrupted export fails with one line; `apoda
predict` on the exported files gives the checkpoint's label maps at any image size (EfficientNet
included); a size that tracing fixes is refused unless the checkpoint resizes to it too; old
(version 1) files are still resized to their size; missing extras are named."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from apoda import export
from apoda.cli import main
from apoda.data import get_scheme
from apoda.data.transforms import Normalisation, resize_image
from apoda.errors import ApodaError
from apoda.export import Tolerance, load_exported, other_size, rounding_tolerance
from apoda.inference import load_segmenter
from apoda.models import Segmenter, upsample_logits
from conftest import TINY

FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
TOLERANCE_LINE = re.compile(
    r"^tolerance 2\*N\*u/\(1-N\*u\)\*T = 2\*(\d+)\*2\^-24/\(1-\1\*2\^-24\)\*(\S+) = (\S+) .*: "
    r"passed$",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def run(one_iteration_run: Path) -> Path:
    """The shared one-iteration run (conftest): only read here."""
    return one_iteration_run


@pytest.fixture(scope="module")
def exported(run: Path) -> dict[str, tuple[Path, str]]:
    """Each format's exported file and what `apoda export` printed."""
    files = {}
    for fmt, name in FILES.items():
        out = run.parent / name
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
        files[fmt] = (out, printed.getvalue())
    return files


@pytest.mark.parametrize("fmt", list(FILES))
def test_export_prints_a_passed_check_and_the_tolerance_formula(
    exported: dict[str, tuple[Path, str]], fmt: str
) -> None:
    out, printed = exported[fmt]
    assert "dynamic axes: batch, height, width" in printed  # the small backbone allows them
    assert "input image float32 [batch, 3, height, width]" in printed
    assert "apoda predict runs each image at its own size, as the checkpoint does" in printed
    assert re.search(r"check at another size, 23x47: .*: passed", printed), printed
    assert "check on minicity val image " in printed  # MiniCity is on disk: a real image
    match = TOLERANCE_LINE.search(printed)
    assert match, printed
    roundings, terms, value = int(match[1]), float(match[2]), float(match[3])
    n_u = roundings * 2.0**-24
    assert value == pytest.approx(2 * n_u / (1 - n_u) * terms, rel=2e-3)  # printed to 3-4 digits
    found = re.search(r"max \|difference\| (\S+) ", printed)
    assert found and float(found[1]) <= value
    assert "argmax agreement: 100.00 % of 4096 pixels" in printed  # 2 images of 32x64

    model = load_exported(out)
    scheme = get_scheme("cityscapes19")
    assert model.size == (32, 64)
    assert model.resize is None  # no data.target_size: each image at its own size
    assert model.normalisation.mode == "imagenet"
    assert model.class_names == scheme.class_names
    assert (model.colors == np.asarray(scheme.colors)).all()


@pytest.mark.parametrize("fmt", list(FILES))
def test_exported_model_takes_other_batch_and_image_sizes(
    run: Path, exported: dict[str, tuple[Path, str]], fmt: str
) -> None:
    segmenter, _, _ = load_segmenter(run)
    x = torch.randn(3, 3, 40, 72, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = segmenter(x)
        logits = load_exported(exported[fmt][0]).run(x)
    assert logits.shape == (3, 19, 40, 72)
    assert float((logits - reference).abs().max()) <= rounding_tolerance(segmenter, x).value


def _corrupting(writer: Any) -> Any:
    """`writer` that adds 1 to a class's bias before writing: the file is no longer the model."""

    def write(model: torch.jit.ScriptModule, *args: Any) -> None:
        with torch.no_grad():
            dict(model.named_parameters())["segmenter.head.conv2d_list.0.bias"].add_(1.0)
        writer(model, *args)

    return write


@pytest.mark.parametrize("fmt", list(FILES))
def test_a_corrupted_export_fails_with_one_line_and_writes_nothing(
    run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    writer = "_write_onnx" if fmt == "onnx" else "_write_torchscript"
    monkeypatch.setattr(export, writer, _corrupting(getattr(export, writer)))
    out = tmp_path / FILES[fmt]
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert re.fullmatch(
        r"error: export check failed: largest \|difference\| (\S+) between .* and PyTorch "
        r"logits exceeds the tolerance (\S+); .* not written\n",
        err,
    ), err
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def _margins(logits: torch.Tensor) -> np.ndarray:
    """Per pixel, the gap between the largest and the second largest logit."""
    top = logits.topk(2, dim=1).values
    return (top[:, 0] - top[:, 1])[0].numpy()


def _frames(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """A random RGB image (seeded) of each (height, width), as PNGs in `folder`."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    files = []
    for height, width in sizes:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        files.append(folder / f"frame{height}x{width}.png")
        Image.fromarray(pixels).save(files[-1])
    return files


def _assert_same_label_maps(
    segmenter: Segmenter,
    resize: tuple[int, int] | None,
    frames: list[Path],
    want: Path,
    got: Path,
) -> None:
    """The label maps in `want` and `got` agree wherever the checkpoint decides the pixel: the
    file's logits are within the tolerance t of the checkpoint's, so a label can only change
    where the checkpoint's top two logits are within 2t. `resize` (height, width): the size
    the checkpoint runs images at (its data.target_size; None: their own), after which predict
    upsamples both logit maps to the image by the same bilinear weights, which sum to 1: the
    difference stays within t, plus the roundings of that upsampling in each, at most
    Tolerance(12 L + 16, max |logit|) (`rounding_tolerance`'s count for an upsampling)."""
    norm = Normalisation("imagenet")
    for frame in frames:
        rgb = np.asarray(Image.open(frame))
        size = rgb.shape[:2]
        if resize is not None:
            rgb = resize_image(rgb, (resize[1], resize[0]))
        x = norm.normalise(rgb)[None]
        with torch.no_grad():
            logits = segmenter(x)
        bound = rounding_tolerance(segmenter, x).value
        if resize is not None:
            longest = max(*resize, *size)
            bound += Tolerance(12 * longest + 16, float(logits.abs().max()) + bound).value
            logits = upsample_logits(logits, size)
        decided = _margins(logits) > 2 * bound
        name = f"{frame.stem}_labelTrainIds.png"
        want_ids = np.asarray(Image.open(want / name))
        got_ids = np.asarray(Image.open(got / name))
        assert got_ids.shape == want_ids.shape == decided.shape
        assert decided.any() and (want_ids == got_ids)[decided].all(), (
            frame.name,
            float((want_ids == got_ids).mean()),
        )
        for suffix in ("_labels.png", "_overlay.png"):
            assert Image.open(got / f"{frame.stem}{suffix}").size == Image.open(frame).size


@pytest.mark.parametrize("fmt", list(FILES))
def test_predict_on_an_exported_file_gives_the_checkpoints_label_maps_at_any_size(
    run: Path, exported: dict[str, tuple[Path, str]], tmp_path: Path, fmt: str
) -> None:
    """At the export size (32x64, the training size) and at others, odd and not multiples of
    8: the file runs each image at its own size, as the checkpoint does (no target_size). Before
    the fix predict resized every image to 32x64 for the file only: about half of 48x80's
    pixels agreed."""
    frames = _frames(tmp_path / "frames", [(32, 64), (48, 80), (45, 77), (64, 128)])
    assert (
        main(["predict", str(run), str(tmp_path / "frames"), "--out", str(tmp_path / "ckpt")]) == 0
    )
    args = [
        "predict",
        str(exported[fmt][0]),
        str(tmp_path / "frames"),
        "--out",
        str(tmp_path / "x"),
    ]
    assert main(args) == 0
    segmenter, _, _ = load_segmenter(run)
    _assert_same_label_maps(segmenter, None, frames, tmp_path / "ckpt", tmp_path / "x")


def test_other_size_flips_the_parity_of_both_sides() -> None:
    assert other_size((32, 64)) == (23, 47)
    assert other_size((64, 128)) == (47, 95)
    for size in [(1, 2), (7, 8), (8, 9), (12, 13), (511, 1024), (512, 1024)]:
        other = other_size(size)
        assert all(o >= 1 and o % 2 != s % 2 and o % 8 for o, s in zip(other, size, strict=True))


@pytest.fixture(scope="module")
def efficientnet_run(tmp_path_factory: pytest.TempPathFactory, apoda_cache: Path) -> Path:
    """A one-iteration EfficientNet-Lite0 run (no pretrained weights), with data.target_size
    80x48: its checkpoint resizes every image to 48x80 before the network."""
    folder = tmp_path_factory.mktemp("efficientnet") / "run"
    overrides = ["model.arch=efficientnet_lite0", "data.target_size=[80,48]"]
    args = ["train", "minicity/source_only", *TINY, "train.iterations=1", "train.eval_every=0"]
    assert main([*args, *overrides, "--out", str(folder)]) == 0
    return folder


@pytest.mark.parametrize("fmt", list(FILES))
def test_an_efficientnet_export_takes_any_size_and_resizes_as_its_checkpoint(
    efficientnet_run: Path, tmp_path: Path, fmt: str
) -> None:
    """EfficientNet's "same" padding depends on the parity of each side; the export keeps it
    dynamic (checked at 48x80 and at 35x59), and `apoda predict` resizes as the checkpoint."""
    out = tmp_path / FILES[fmt]
    result = export.export_checkpoint(efficientnet_run, fmt, out)
    assert result.dynamic_axes == ["batch", "height", "width"]
    assert result.size == result.resize == (48, 80)
    assert result.other is not None and result.other.size == (35, 59)
    assert result.other.max_difference <= result.other.tolerance.value
    model = load_exported(out)
    assert model.resize == (48, 80)

    segmenter, _, _ = load_segmenter(efficientnet_run)
    for size in [(30, 51), (47, 80)]:  # mixed parities; export checked 48x80 and 35x59
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            difference = (model.run(x) - segmenter(x)).abs().max()
        assert float(difference) <= rounding_tolerance(segmenter, x).value, size

    frames = _frames(tmp_path / "frames", [(45, 77), (64, 128)])
    for name, model_path in (("ckpt", efficientnet_run), ("x", out)):
        args = ["predict", str(model_path), str(tmp_path / "frames"), "--out", str(tmp_path / name)]
        assert main(args) == 0
    _assert_same_label_maps(segmenter, (48, 80), frames, tmp_path / "ckpt", tmp_path / "x")


def _fixing_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `export._trace` report that tracing fixed the size, as when Python reads it."""
    trace = export._trace

    def fixed(*args: Any) -> tuple[Any, str]:
        return trace(*args)[0], "Converting a tensor to a Python integer"

    monkeypatch.setattr(export, "_trace", fixed)


def test_a_fixed_size_export_is_refused_unless_the_checkpoint_resizes_to_it(
    run: Path,
    efficientnet_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fixing_trace(monkeypatch)
    refused = [
        ([str(run)], "runs each image at its own size (no data.target_size)"),
        (
            [str(efficientnet_run), "--size", "32x64"],
            "resizes images to its data.target_size 48x80",
        ),
    ]
    for args, why in refused:
        out = tmp_path / "m.ts"
        assert main(["export", *args, "--format", "torchscript", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "tracing fixed the input size to " in err, err
        assert why in err and "not written" in err, err
        assert not out.exists()

    out = tmp_path / "fixed.onnx"
    result = export.export_checkpoint(efficientnet_run, "onnx", out)  # at data.target_size
    assert result.dynamic_axes == ["batch"] and result.other is None
    model = load_exported(out)
    assert model.size == model.resize == (48, 80)


def test_a_version_1_export_is_still_resized_to_its_size(
    run: Path, exported: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    """Files of metadata version 1 carry no `resize`: predict runs them at their export size, as
    it did when they were written; a version this apoda does not know is one line."""
    import json

    import onnx

    proto = onnx.load(str(exported["onnx"][0]))
    meta = json.loads(proto.metadata_props[0].value)
    assert meta["format_version"] == 2 and meta["input"]["resize"] is None
    meta["format_version"] = 1
    for key in ("resize", "resize_meaning", "size_meaning"):
        del meta["input"][key]
    old = tmp_path / "old.onnx"
    onnx.helper.set_model_props(proto, {"apoda": json.dumps(meta)})
    onnx.save(proto, str(old))
    assert load_exported(old).resize == (32, 64)

    frames = _frames(tmp_path / "frames", [(48, 80)])
    assert main(["predict", str(old), str(tmp_path / "frames"), "--out", str(tmp_path / "p")]) == 0
    ids = Image.open(tmp_path / "p" / "frame48x80_labelTrainIds.png")
    assert ids.size == Image.open(frames[0]).size

    meta["format_version"] = 3
    onnx.helper.set_model_props(proto, {"apoda": json.dumps(meta)})
    onnx.save(proto, str(old))
    with pytest.raises(ApodaError, match="version 3, this apoda reads 1 and 2"):
        load_exported(old)


def test_missing_onnx_packages_name_the_extra(
    run: Path,
    exported: dict[str, tuple[Path, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: ONNX export needs onnx and onnxruntime (onnxruntime is not installed): "
        "pip install 'apoda[export]'\n"
    )
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(frames / "a.png")
    args = ["predict", str(exported["onnx"][0]), str(frames), "--out", str(tmp_path / "p")]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "error: running an ONNX model needs onnxruntime (onnxruntime is not installed): "
        "pip install 'apoda[export]'\n"
    )
    # TorchScript needs neither package
    assert (
        main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 0
    )


def test_bad_input_is_one_line_naming_the_value(
    run: Path,
    exported: dict[str, tuple[Path, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import onnx

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(frames / "a.png")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(exported["onnx"][0]))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    checkpoint = run / "checkpoints" / "last.pt"
    cases = [
        (
            [
                "export",
                str(run),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "m.onnx"),
                "--size",
                "64by128",
            ],
            "64by128",
        ),
        (["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.pt")], "m.pt"),
        (["export", str(run), "--format", "torchscript", "--out", str(checkpoint)], "last.pt"),
        (["predict", str(garbage), str(frames), "--out", str(tmp_path / "p")], "garbage.onnx"),
        (["predict", str(foreign), str(frames), "--out", str(tmp_path / "p")], "no apoda metadata"),
    ]
    for args, named in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err


def test_a_folder_trained_export_keeps_its_own_classes_and_legend(
    tmp_path: Path, apoda_cache: Path
) -> None:
    from apoda.data.minicity import MiniCityConfig, ensure_minicity
    from apoda.data.minicity.folder_export import CATEGORIES, write_minicity_folder

    tiny = MiniCityConfig(n_source=16, n_target_train=16, n_target_val=8, height=32, width=64)
    source, target = write_minicity_folder(ensure_minicity(tiny), tmp_path / "data", False)
    roots = [f"data.source_root={source}", f"data.target_root={target}"]
    fast = ["data.batch_size=4", "train.progress=false", "train.iterations=1", "train.eval_every=0"]
    run = tmp_path / "run"
    assert main(["train", "folder/source_only", *roots, *fast, "--out", str(run)]) == 0
    model = tmp_path / "model.ts"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(model)]) == 0
    assert load_exported(model).class_names == tuple(CATEGORIES)

    frames = target / "images" / "val"
    for name, source_model in (("ckpt", run), ("x", model)):
        assert main(["predict", str(source_model), str(frames), "--out", str(tmp_path / name)]) == 0
    legend = (tmp_path / "x" / "classes.yaml").read_text()
    assert legend == (tmp_path / "ckpt" / "classes.yaml").read_text()
    colours = np.asarray(Image.open(next((tmp_path / "x").rglob("*_labels.png"))))
    assert {tuple(c) for c in colours.reshape(-1, 3)} <= set(CATEGORIES.values())
