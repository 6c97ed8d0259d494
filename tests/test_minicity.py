"""MiniCity: determinism, on-disk layouts, the cache marker, class balance and the domain gap."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label, name2label
from PIL import Image

from apoda.data.minicity import (
    MARKER,
    REAL,
    SYNTHETIC,
    TARGET_CITIES,
    MiniCityConfig,
    cache_dir,
    ensure_minicity,
    folder_name,
    generate_minicity,
    render_scene,
)
from apoda.data.minicity import generate as minicity  # ensure_minicity's module, patched below
from apoda.errors import ApodaError

SMALL = MiniCityConfig(
    seed=3, n_source=6, n_target_train=6, n_target_val=4, n_randomised=2, height=32, width=64
)
CLASS_IDS = {lab.name: lab.id for lab in id2label.values() if 0 <= lab.trainId < 19}
EGO_ID = name2label["ego vehicle"].id


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _indices(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_minicity(tmp_path_factory.mktemp("small"), SMALL)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 source and 100 target images at the default 64x128."""
    config = MiniCityConfig(seed=0, n_source=200, n_target_train=100, n_target_val=1)
    return generate_minicity(tmp_path_factory.mktemp("large"), config)


def _fractions(paths: list[Path]) -> dict[str, float]:
    counts = np.zeros(256, np.int64)
    for p in paths:
        counts += np.bincount(_indices(p).ravel(), minlength=256)
    labelled = counts[list(CLASS_IDS.values())].sum()
    return {name: counts[i] / labelled for name, i in CLASS_IDS.items()}


def test_same_config_gives_byte_identical_files(small: Path, tmp_path: Path) -> None:
    again = generate_minicity(tmp_path / "again", SMALL)
    first, second = _files(small), _files(again)
    assert len(first) == 2 * (6 + 6 + 4 + 2) + 1
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    other = generate_minicity(tmp_path / "other", MiniCityConfig(**{**vars(SMALL), "seed": 4}))
    assert _files(other)["source/images/00000.png"] != first["source/images/00000.png"]


def test_source_is_in_gta5_layout_with_palette_labels(small: Path) -> None:
    for split, n in (("source", 6), ("randomised", 2)):
        names = sorted(p.name for p in (small / split / "images").iterdir())
        assert names == [f"{i:05d}.png" for i in range(n)]
        assert names == sorted(p.name for p in (small / split / "labels").iterdir())
    image = Image.open(small / "source/images/00003.png")
    label = Image.open(small / "source/labels/00003.png")
    assert (image.mode, image.size) == ("RGB", (64, 32))
    assert (label.mode, label.size) == ("P", (64, 32))
    palette = label.getpalette()
    assert palette is not None
    for name in ("road", "car", "sky"):
        i = name2label[name].id
        assert tuple(palette[3 * i : 3 * i + 3]) == name2label[name].color
    for p in sorted((small / "source/labels").iterdir()):
        assert set(np.unique(_indices(p)).tolist()) <= set(CLASS_IDS.values())


def test_target_is_in_cityscapes_layout_with_id_labels(small: Path) -> None:
    pattern = re.compile(r"([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png")
    for split, n in (("train", 6), ("val", 4)):
        images = sorted((small / "target/leftImg8bit" / split).glob("*/*.png"))
        assert len(images) == n
        for image_path in images:
            match = pattern.fullmatch(image_path.name)
            assert match is not None and match.group(1) == image_path.parent.name
            assert image_path.parent.name in TARGET_CITIES[split]
            stem = image_path.name.removesuffix("_leftImg8bit.png")
            label_path = (
                small
                / "target/gtFine"
                / split
                / image_path.parent.name
                / f"{stem}_gtFine_labelIds.png"
            )
            label = Image.open(label_path)
            assert label.mode == "L" and label.size == Image.open(image_path).size == (64, 32)
            assert set(np.unique(_indices(label_path)).tolist()) <= {*CLASS_IDS.values(), EGO_ID}
    assert not set(TARGET_CITIES["train"]) & set(TARGET_CITIES["val"])
    marker = json.loads((small / MARKER).read_text())
    assert marker["config"] == vars(SMALL)
    assert marker["format_version"] == minicity.FORMAT_VERSION


def test_ensure_regenerates_only_when_marker_missing_or_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[MiniCityConfig] = []
    real_generate = minicity.generate_minicity

    def counting(out: Path, config: MiniCityConfig, progress: bool = False) -> Path:
        calls.append(config)
        return real_generate(out, config, progress)

    monkeypatch.setattr(minicity, "generate_minicity", counting)
    monkeypatch.setenv("APODA_CACHE", str(tmp_path / "cache"))
    root = ensure_minicity(SMALL, progress=False)
    assert root == tmp_path / "cache" / folder_name(SMALL)
    assert (root / MARKER).is_file() and len(calls) == 1
    stamp = (root / "source/images/00000.png").stat().st_mtime_ns
    assert ensure_minicity(SMALL, progress=False) == root and len(calls) == 1
    assert (root / "source/images/00000.png").stat().st_mtime_ns == stamp
    (root / MARKER).unlink()  # as after an interrupted generation
    ensure_minicity(SMALL, progress=False)
    assert len(calls) == 2 and (root / MARKER).is_file()
    bigger = MiniCityConfig(**{**vars(SMALL), "n_source": 7, "n_randomised": 0})
    ensure_minicity(bigger, root=root, progress=False)
    assert len(calls) == 3
    assert len(list((root / "source/images").iterdir())) == 7
    assert not (root / "randomised").exists()


def test_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APODA_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("APODA_CACHE")
    assert cache_dir() == tmp_path / "x" / "apoda"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "apoda"


def test_bad_config_and_output_raise_apoda_error(tmp_path: Path) -> None:
    with pytest.raises(ApodaError, match="n_source"):
        MiniCityConfig(n_source=0)
    with pytest.raises(ApodaError, match="16x16"):
        MiniCityConfig(height=8)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ApodaError, match="not a folder"):
        generate_minicity(tmp_path / "file", SMALL)


def test_source_classes_are_long_tailed(large: Path) -> None:
    frac = _fractions(sorted((large / "source/labels").iterdir()))
    assert all(v > 0 for v in frac.values()), frac
    for name in ("road", "building", "sky", "vegetation"):
        assert frac[name] > 0.05, (name, frac[name])
    for name in ("traffic light", "traffic sign", "rider", "bicycle", "motorcycle", "train"):
        assert frac[name] < 0.01, (name, frac[name])


def test_target_priors_differ_from_source(large: Path) -> None:
    source = _fractions(sorted((large / "source/labels").iterdir()))
    target = _fractions(sorted((large / "target/gtFine/train").glob("*/*.png")))
    assert target["person"] > 1.5 * source["person"]
    assert target["bicycle"] > 1.5 * source["bicycle"]
    assert target["truck"] < source["truck"]


def test_target_looks_different_from_source(large: Path) -> None:
    def stats(images: list[Path], labels: list[Path]) -> tuple[np.ndarray, float, float]:
        imgs = np.stack([np.asarray(Image.open(p), np.float32) for p in images[:100]])
        labs = np.stack([_indices(p) for p in labels[:100]])
        saturation = (imgs.max(axis=3) - imgs.min(axis=3)).mean()
        # Change between neighbouring pixels of the same class: texture and sensor noise,
        # which the flat synthetic colours lack.
        same = labs[:, :, 1:] == labs[:, :, :-1]
        change = np.abs(np.diff(imgs, axis=2)).sum(axis=3)[same]
        return imgs.mean(axis=(0, 1, 2)), float(saturation), float(change.mean())

    src_mean, src_sat, src_hf = stats(
        sorted((large / "source/images").iterdir()), sorted((large / "source/labels").iterdir())
    )
    tgt_mean, tgt_sat, tgt_hf = stats(
        sorted((large / "target/leftImg8bit/train").glob("*/*")),
        sorted((large / "target/gtFine/train").glob("*/*")),
    )
    assert np.abs(src_mean - tgt_mean).max() > 5.0
    assert tgt_sat < 0.8 * src_sat
    assert tgt_hf > 2.0 * src_hf


def test_within_region_texture_is_a_target_property() -> None:
    def region_noise(style_index: int) -> float:
        style = (SYNTHETIC, REAL)[style_index]
        diffs = []
        for i in range(10):
            img, lab = render_scene(np.random.default_rng([1, i]), style, 64, 128)
            same = lab[:, 1:] == lab[:, :-1]
            road = same & (lab[:, 1:] == CLASS_IDS["road"])
            diffs.append(np.abs(np.diff(img.astype(np.float32), axis=1)).sum(axis=2)[road])
        return float(np.median(np.concatenate(diffs)))

    assert region_noise(0) < 1.0 < 4.0 < region_noise(1)


def test_larger_images_render_every_class_shape() -> None:
    for style in (SYNTHETIC, REAL):
        img, lab = render_scene(np.random.default_rng(5), style, 128, 256)
        assert img.shape == (128, 256, 3) and img.dtype == np.uint8
        assert lab.shape == (128, 256)
        assert {CLASS_IDS[n] for n in ("road", "sky", "building")} <= set(np.unique(lab).tolist())
