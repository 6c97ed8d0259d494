"""`apoda export`: ONNX and TorchScript files of a checkpoint's segmenter, checked against
PyTorch within the printed float32 tolerance; a corrupted export fails with one line; `apoda
predict` on the exported files gives the checkpoint's label maps; missing extras are named."""

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
from apoda.data.transforms import Normalisation
from apoda.export import load_exported, rounding_tolerance
from apoda.inference import load_segmenter

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


@pytest.mark.parametrize("fmt", list(FILES))
def test_predict_on_an_exported_file_gives_the_checkpoints_label_maps(
    run: Path, exported: dict[str, tuple[Path, str]], tmp_path: Path, fmt: str
) -> None:
    """Each logit is within the tolerance t of the checkpoint's, so a pixel's label can only
    change where its top two logits are within 2t: everywhere else the maps must agree."""
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for index in range(3):  # at the export size, where the checkpoint also runs (no resize)
        pixels = rng.integers(0, 256, size=(32, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(frames / f"frame{index}.png")
    assert main(["predict", str(run), str(frames), "--out", str(tmp_path / "ckpt")]) == 0
    assert main(["predict", str(exported[fmt][0]), str(frames), "--out", str(tmp_path / "x")]) == 0

    segmenter, _, _ = load_segmenter(run)
    norm = Normalisation("imagenet")
    for index in range(3):
        name = f"frame{index}_labelTrainIds.png"
        want = np.asarray(Image.open(tmp_path / "ckpt" / name))
        got = np.asarray(Image.open(tmp_path / "x" / name))
        x = norm.normalise(np.asarray(Image.open(frames / f"frame{index}.png")))[None]
        with torch.no_grad():
            margins = _margins(segmenter(x))
        bound = rounding_tolerance(segmenter, x).value
        decided = margins > 2 * bound
        assert decided.any() and (want == got)[decided].all()
        for suffix in ("_labels.png", "_overlay.png"):
            colours = Image.open(tmp_path / "x" / f"frame{index}{suffix}")
            assert colours.size == (64, 32)


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
    from apoda.data.minicity_folder import CATEGORIES, write_minicity_folder

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
