"""Readers, transforms and the GTA5, SYNTHIA and Cityscapes datasets on tiny real-layout files."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from apoda.config import Config, load_config
from apoda.data import (
    CITYSCAPES19,
    SYNTHIA16,
    AugmentConfig,
    CityscapesDataset,
    GTA5Dataset,
    Normalisation,
    SynthiaDataset,
    build_dataset,
)
from apoda.data.io import read_label_indices, read_rgb, read_synthia_label
from apoda.data.transforms import CAFFE_MEAN_BGR, augment_pair, prepare_sample
from apoda.engine.data import build_run_data
from apoda.errors import ApodaError
from apoda.inference import dataset_for
from apoda.registry import DATASETS, dataset_names, get_dataset, register_dataset

W, H = 8, 6
# Cityscapes label ids: 7 road, 26 car, 0 unlabelled, 33 bicycle, 22 terrain.
CS_IDS = np.array([[7] * 8, [7] * 8, [26] * 8, [26] * 4 + [0] * 4, [33] * 8, [22] * 8], np.uint8)


def _rgb(seed: int, w: int = W, h: int = H) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_palette_png(path: Path, indices: np.ndarray) -> None:
    """A palette PNG whose colours are unlike its indices (colour i = (255 - i, 3, 200))."""
    image = Image.fromarray(indices).convert("P")
    image.putpalette([v for i in range(256) for v in (255 - i, 3, 200)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _save_rgb(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_gta5(root: Path, n: int = 3) -> Path:
    for i in range(1, n + 1):
        _save_rgb(root / "images" / f"{i:05d}.png", _rgb(i))
        _save_palette_png(root / "labels" / f"{i:05d}.png", CS_IDS)
    return root


def _synthia_label(classes: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """BGR uint16 array as cv2 writes it: class in red (index 2), instance in green."""
    bgr = np.zeros((*classes.shape, 3), dtype=np.uint16)
    bgr[:, :, 2] = classes
    bgr[:, :, 1] = instances
    return bgr


# Raw SYNTHIA ids: 3 road, 8 car, 0 void, 11 bicycle, 1 sky, 16 (unused here: ignore).
SYN_IDS = np.array([[3] * 8, [3] * 8, [8] * 8, [8] * 4 + [0] * 4, [11] * 8, [1] * 4 + [16] * 4])


def make_synthia(root: Path, n: int = 2) -> Path:
    instances = np.full((H, W), 1000, dtype=np.uint16)
    for i in range(1, n + 1):
        _save_rgb(root / "RGB" / f"{i:07d}.png", _rgb(i))
        path = root / "GT" / "LABELS" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), _synthia_label(SYN_IDS.astype(np.uint16), instances))
    return root


CITY_STEMS = [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000001_000019")]


def make_cityscapes(root: Path, split: str = "val", labels: bool = True) -> Path:
    for k, (city, stem) in enumerate(CITY_STEMS):
        _save_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb(k))
        if not labels:
            continue
        gt = root / "gtFine" / split / city
        _save_palette_png(gt / f"{stem}_gtFine_color.png", np.full((H, W), 26, np.uint8))
        Image.fromarray(CS_IDS).save(gt / f"{stem}_gtFine_labelIds.png")
        instances = np.full((H, W), 26001, np.uint16)
        cv2.imwrite(str(gt / f"{stem}_gtFine_instanceIds.png"), instances)
        (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": H}))
    return root


# --- readers -------------------------------------------------------------------------------


def test_read_label_indices_returns_indices_not_palette_colours(tmp_path: Path) -> None:
    path = tmp_path / "l.png"
    _save_palette_png(path, CS_IDS)
    with Image.open(path) as image:
        assert image.mode == "P"
    np.testing.assert_array_equal(read_label_indices(path), CS_IDS)
    assert read_rgb(path)[0, 0].tolist() == [255 - 7, 3, 200]  # the colour of index 7


def test_readers_name_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ApodaError, match=r"missing file .*nope\.png"):
        read_rgb(tmp_path / "nope.png")
    path = tmp_path / "big.png"
    _save_rgb(path, _rgb(0, 64, 64))
    _truncate(path)
    with pytest.raises(ApodaError, match=r"big\.png: corrupt or truncated"):
        read_rgb(path)
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(ApodaError, match=r"junk\.png: corrupt"):
        read_label_indices(tmp_path / "junk.png")
    rgb_label = tmp_path / "rgb_label.png"
    _save_rgb(rgb_label, _rgb(1))
    with pytest.raises(ApodaError, match=r"rgb_label\.png: expected a palette .* got mode RGB"):
        read_label_indices(rgb_label)


def test_read_synthia_label_takes_red_channel_and_rejects_8_bit(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    instances = np.arange(H * W, dtype=np.uint16).reshape(H, W) + 300
    cv2.imwrite(str(path), _synthia_label(SYN_IDS.astype(np.uint16), instances))
    out = read_synthia_label(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, SYN_IDS)
    eight = tmp_path / "eight.png"
    cv2.imwrite(str(eight), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ApodaError, match=r"eight\.png: expected a 16-bit 3-channel PNG .*8-bit"):
        read_synthia_label(eight)
    gray16 = tmp_path / "gray16.png"
    cv2.imwrite(str(gray16), np.zeros((H, W), np.uint16))
    with pytest.raises(ApodaError, match=r"got 16-bit 1-channel"):
        read_synthia_label(gray16)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ApodaError, match=r"bad\.png: corrupt"):
        read_synthia_label(tmp_path / "bad.png")
    with pytest.raises(ApodaError, match="missing file"):
        read_synthia_label(tmp_path / "absent.png")


# --- transforms ----------------------------------------------------------------------------


def test_caffe_normalisation_is_bgr_minus_mean_and_round_trips() -> None:
    image = _rgb(3)
    norm = Normalisation("caffe")
    x = norm.normalise(image)
    assert x.dtype == torch.float32 and x.shape == (3, H, W)
    r, g, b = (float(v) for v in image[0, 0])
    assert x[:, 0, 0].tolist() == pytest.approx(
        [b - CAFFE_MEAN_BGR[0], g - CAFFE_MEAN_BGR[1], r - CAFFE_MEAN_BGR[2]], abs=1e-4
    )
    np.testing.assert_array_equal(norm.denormalise(x), image)
    imagenet = Normalisation("imagenet")
    y = imagenet.normalise(image)
    assert float(y[0, 0, 0]) == pytest.approx((r / 255 - 0.485) / 0.229, abs=1e-5)
    np.testing.assert_array_equal(imagenet.denormalise(y), image)
    with pytest.raises(ApodaError, match="unknown normalisation 'torch'"):
        Normalisation("torch")


def test_label_full_res_resizes_only_the_image() -> None:
    image, label = _rgb(0, 16, 8), np.repeat(np.arange(8, dtype=np.uint8), 2)[None].repeat(8, 0)
    rng = np.random.default_rng(0)
    norm = Normalisation("caffe")
    x, y = prepare_sample(
        image, label, size=(8, 4), normalisation=norm, augment=None, rng=rng, label_full_res=True
    )
    assert x.shape == (3, 4, 8) and y.shape == (8, 16) and y.dtype == torch.int64
    x, y = prepare_sample(image, label, size=(8, 4), normalisation=norm, augment=None, rng=rng)
    assert y.shape == (4, 8)
    assert set(y.unique().tolist()) <= set(range(8))  # nearest: no blended label values


def test_augmentation_is_reproducible_from_the_generator_and_pads_with_ignore() -> None:
    image, label = _rgb(0, 10, 6), np.arange(60, dtype=np.uint8).reshape(6, 10)
    config = AugmentConfig(random_scale=(0.5, 1.5), crop=(12, 8), flip=True, photometric=True)
    a = augment_pair(image, label, config, np.random.default_rng([0, 3, 1]))
    b = augment_pair(image, label, config, np.random.default_rng([0, 3, 1]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (8, 12, 3) and a[1].shape == (8, 12)
    draws = [augment_pair(image, label, config, np.random.default_rng(s))[1] for s in range(6)]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])
    assert any((d == 255).any() for d in draws)  # crops larger than the scaled image are padded
    flip_only = AugmentConfig(flip=True)
    flips = [augment_pair(image, label, flip_only, np.random.default_rng(s)) for s in range(8)]
    assert any(np.array_equal(lab, label[:, ::-1]) for _, lab in flips)
    assert all(
        np.array_equal(lab, label) or np.array_equal(lab, label[:, ::-1]) for _, lab in flips
    )
    with pytest.raises(ApodaError, match="crop must be"):
        AugmentConfig(crop=(0, 4))


def _close_to(labels: list[np.ndarray], ok: Callable[[np.ndarray], bool], p: float) -> bool:
    """Whether the share of `labels` that are `ok` lies within 4 standard deviations of `p`."""
    share = sum(ok(lab) for lab in labels) / len(labels)
    return abs(share - p) < 4 * math.sqrt(p * (1 - p) / len(labels))


def test_crops_are_redrawn_while_one_class_dominates_them() -> None:
    """mmseg's `cat_max_ratio`: an 8x8 crop of an 8x32 label (class 0 in columns 0-5, 2 in
    26-31, 1 between) is accepted when no class covers 75 % of it: 6 of the 25 corners (1-3 and
    21-23), p = 0.24 for one draw and 1 - 0.76^11 for up to 11."""
    image = _rgb(0, 32, 8)
    label = np.ones((8, 32), dtype=np.uint8)
    label[:, :6], label[:, 26:] = 0, 2
    balanced = lambda lab: np.bincount(lab.ravel()).max() / lab.size < 0.75  # noqa: E731
    plain = AugmentConfig(crop=(8, 8))
    redrawn = AugmentConfig(crop=(8, 8), cat_max_ratio=0.75)
    off = [augment_pair(image, label, plain, np.random.default_rng([7, s]))[1] for s in range(400)]
    on = [augment_pair(image, label, redrawn, np.random.default_rng([7, s]))[1] for s in range(400)]
    assert _close_to(off, balanced, 6 / 25) and _close_to(on, balanced, 1 - (19 / 25) ** 11)
    # the first draw is the plain crop's: where that one is accepted both agree
    assert all(np.array_equal(a, b) for a, b in zip(off, on, strict=True) if balanced(a))
    unlabelled = np.full_like(label, 255)  # a target's: never re-drawn
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    np.testing.assert_array_equal(
        augment_pair(image, unlabelled, plain, rng_a)[0],
        augment_pair(image, unlabelled, redrawn, rng_b)[0],
    )
    with pytest.raises(ApodaError, match="cat_max_ratio must be in"):
        AugmentConfig(cat_max_ratio=0.0)


def test_a_crop_drawn_for_a_class_is_redrawn_until_it_holds_it() -> None:
    """DAFormer's `min_crop_ratio`: class 3 fills columns 29-31 of an 8x32 label; an 8x8 crop
    holds more than 8 of its pixels at 2 of the 25 corners (23, 24): p = 2/25 for one draw and
    1 - (23/25)^11 for up to 11. Items drawn without a class are cropped once."""
    image = _rgb(0, 32, 8)
    label = np.zeros((8, 32), dtype=np.uint8)
    label[:, 29:] = 3
    config = AugmentConfig(crop=(8, 8), min_class_pixels=8)
    holds = lambda lab: np.count_nonzero(lab == 3) > 8  # noqa: E731
    rngs = [np.random.default_rng([9, s]) for s in range(400)]
    wanted = [augment_pair(image, label, config, rng, wanted=3)[1] for rng in rngs]
    rngs = [np.random.default_rng([9, s]) for s in range(400)]
    plain = [augment_pair(image, label, config, rng)[1] for rng in rngs]
    assert _close_to(plain, holds, 2 / 25) and _close_to(wanted, holds, 1 - (23 / 25) ** 11)


# --- GTA5 ----------------------------------------------------------------------------------


def test_gta5_maps_palette_indices_to_train_ids(tmp_path: Path) -> None:
    ds = GTA5Dataset(make_gta5(tmp_path / "gta5"), CITYSCAPES19)
    assert len(ds) == 3
    item = ds[1]
    assert item["name"] == "00002"
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    label = item["label"]
    assert label.dtype == torch.int64
    assert label[0].tolist() == [0] * 8  # road id 7 -> 0
    assert label[2].tolist() == [13] * 8  # car id 26 -> 13
    assert label[3].tolist() == [13] * 4 + [255] * 4  # unlabelled -> ignore
    assert label[4].tolist() == [18] * 8 and label[5].tolist() == [9] * 8
    np.testing.assert_array_equal(ds.read_label(1), label.numpy())
    assert (
        ds.image_path(0).name == "00001.png"
        and ds.label_path(0) == tmp_path / "gta5/labels/00001.png"
    )
    # In the 16-class scheme terrain has no slot.
    assert GTA5Dataset(tmp_path / "gta5", SYNTHIA16).read_label(0)[5].tolist() == [255] * 8


def test_gta5_resize_and_max_items(tmp_path: Path) -> None:
    ds = GTA5Dataset(make_gta5(tmp_path / "g"), CITYSCAPES19, size=(4, 3), max_items=2)
    assert len(ds) == 2
    item = ds[0]
    assert item["image"].shape == (3, 3, 4) and item["label"].shape == (3, 4)
    full = GTA5Dataset(tmp_path / "g", CITYSCAPES19, size=(4, 3), label_full_res=True)[0]
    assert full["image"].shape == (3, 3, 4) and full["label"].shape == (H, W)
    with pytest.raises(ApodaError, match="size must be"):
        GTA5Dataset(tmp_path / "g", CITYSCAPES19, size=(4, -3))
    with pytest.raises(ApodaError, match="cannot be combined"):
        GTA5Dataset(tmp_path / "g", CITYSCAPES19, label_full_res=True, augment=AugmentConfig())


def test_gta5_augmented_items_repeat_per_epoch(tmp_path: Path) -> None:
    config = AugmentConfig(crop=(4, 4), flip=True, photometric=True)
    ds = GTA5Dataset(make_gta5(tmp_path / "g", n=1), CITYSCAPES19, augment=config, seed=7)
    first = [ds[0]["image"] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    others = []
    for epoch in range(1, 4):
        ds.set_epoch(epoch)
        others.append(ds[0]["image"])
    assert any(not torch.equal(first[0], o) for o in others)


def test_gta5_list_file_skips_missing_pairs_with_one_counted_warning(tmp_path: Path) -> None:
    root = make_gta5(tmp_path / "g", n=3)
    (root / "labels" / "00003.png").unlink()
    listing = tmp_path / "train.txt"
    listing.write_text("00001.png\n00002.png\n00003.png\n00009.png\n\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = GTA5Dataset(root, CITYSCAPES19, list_file=listing)
    assert len(caught) == 1
    assert "skipped 2 of 4 listed pairs missing on disk" in str(caught[0].message)
    assert [ds.image_path(i).name for i in range(len(ds))] == ["00001.png", "00002.png"]
    with pytest.raises(ApodaError, match="missing list file"):
        GTA5Dataset(root, CITYSCAPES19, list_file=tmp_path / "none.txt")


def test_gta5_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ApodaError, match=r"dataset root .*absent does not exist; expected GTA5"):
        GTA5Dataset(tmp_path / "absent", CITYSCAPES19)
    (tmp_path / "flat").mkdir()
    with pytest.raises(
        ApodaError, match=r"expected GTA5 layout ROOT/images/\*\.png and ROOT/labels/\*\.png"
    ):
        GTA5Dataset(tmp_path / "flat", CITYSCAPES19)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    with pytest.raises(ApodaError, match=r"no images found under .*empty"):
        GTA5Dataset(tmp_path / "empty", CITYSCAPES19)
    root = make_gta5(tmp_path / "g", n=2)
    (root / "labels" / "00002.png").unlink()
    with pytest.raises(ApodaError, match=r"1 of 2 images .* have no label .*first: 00002\.png"):
        GTA5Dataset(root, CITYSCAPES19)


def test_gta5_per_file_errors_at_read_time(tmp_path: Path) -> None:
    root = make_gta5(tmp_path / "g", n=3)
    _save_palette_png(root / "labels" / "00002.png", CS_IDS[:4])
    _truncate(root / "images" / "00003.png")
    ds = GTA5Dataset(root, CITYSCAPES19)
    assert ds[0]["label"].shape == (H, W)
    with pytest.raises(ApodaError, match=r"00002\.png is 8x6 but its label .*00002\.png is 8x4"):
        ds[1]
    with pytest.raises(ApodaError, match=r"00003\.png: corrupt or truncated"):
        ds[2]
    (root / "labels" / "00001.png").unlink()
    with pytest.raises(ApodaError, match=r"missing label .*00001\.png"):
        ds[0]


# --- SYNTHIA -------------------------------------------------------------------------------


def test_synthia_reads_16_bit_labels_into_16_and_19_slot_schemes(tmp_path: Path) -> None:
    root = make_synthia(tmp_path / "syn")
    ds = SynthiaDataset(root, SYNTHIA16)
    assert len(ds) == 2 and ds[0]["name"] == "0000001"
    label = ds[0]["label"]
    assert label[0].tolist() == [0] * 8  # road
    assert label[2].tolist() == [12] * 8  # car
    assert label[3].tolist() == [12] * 4 + [255] * 4  # void -> ignore
    assert label[4].tolist() == [15] * 8  # bicycle
    assert label[5].tolist() == [9] * 4 + [255] * 4  # sky; an unused raw id is ignored
    wide = SynthiaDataset(root, CITYSCAPES19).read_label(0)
    assert wide[2].tolist() == [13] * 8 and wide[4].tolist() == [18] * 8 and wide[5, 0] == 10


def test_synthia_errors(tmp_path: Path) -> None:
    (tmp_path / "syn" / "RGB").mkdir(parents=True)
    with pytest.raises(ApodaError, match=r"expected SYNTHIA layout ROOT/RGB/\*\.png and ROOT/GT"):
        SynthiaDataset(tmp_path / "syn", SYNTHIA16)
    root = make_synthia(tmp_path / "s2")
    cv2.imwrite(str(root / "GT" / "LABELS" / "0000002.png"), np.zeros((H, W, 3), np.uint8))
    ds = SynthiaDataset(root, SYNTHIA16)
    with pytest.raises(ApodaError, match=r"0000002\.png: expected a 16-bit 3-channel PNG"):
        ds[1]


# --- Cityscapes ----------------------------------------------------------------------------


def test_cityscapes_uses_label_ids_and_ignores_sibling_files(tmp_path: Path) -> None:
    ds = CityscapesDataset(make_cityscapes(tmp_path / "cs"), CITYSCAPES19, split="val")
    assert len(ds) == 2
    assert [ds[i]["name"] for i in range(2)] == [stem for _, stem in CITY_STEMS]
    assert ds.label_path(1).name == "lindau_000001_000019_gtFine_labelIds.png"
    label = ds[0]["label"]
    assert label[0, 0] == 0 and label[2, 0] == 13 and label[3, 7] == 255 and label[5, 0] == 9
    same = build_dataset("cityscapes", tmp_path / "cs", "val", CITYSCAPES19, size=(4, 3))
    assert same[0]["image"].shape == (3, 3, 4)


def test_cityscapes_unlabelled_needs_no_gtfine(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cs", split="train", labels=False)
    ds = CityscapesDataset(root, CITYSCAPES19, split="train", labelled=False, size=(4, 3))
    item = ds[0]
    assert ds.label_path(0) is None
    assert item["label"].shape == (3, 4) and bool((item["label"] == 255).all())
    assert ds.read_label(1).shape == (H, W)
    with pytest.raises(ApodaError, match=r"expected Cityscapes layout .*missing .*gtFine/train"):
        CityscapesDataset(root, CITYSCAPES19, split="train")


def test_cityscapes_errors(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cs")
    with pytest.raises(ApodaError, match="unknown Cityscapes split 'testing'"):
        CityscapesDataset(root, CITYSCAPES19, split="testing")
    with pytest.raises(ApodaError, match=r"missing .*leftImg8bit/train"):
        CityscapesDataset(root, CITYSCAPES19, split="train")
    (root / "gtFine/val/lindau/lindau_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(ApodaError, match=r"1 of 2 images .*lindau_000001_000019_gtFine_labelIds"):
        CityscapesDataset(root, CITYSCAPES19, split="val")


def test_build_dataset_names_and_splits(tmp_path: Path) -> None:
    root = make_gta5(tmp_path / "g", n=1)
    assert isinstance(build_dataset("gta5", root, "train", CITYSCAPES19), GTA5Dataset)
    syn = make_synthia(tmp_path / "s", n=1)
    assert isinstance(build_dataset("synthia", syn, "train", SYNTHIA16), SynthiaDataset)
    with pytest.raises(ApodaError, match="gta5 has a single split 'train'"):
        build_dataset("gta5", root, "val", CITYSCAPES19)
    with pytest.raises(ApodaError, match="unknown dataset 'idd'"):
        build_dataset("idd", root, "train", CITYSCAPES19)  # type: ignore[arg-type]


# -- the dataset registry -------------------------------------------------------------------------
def test_the_builtin_datasets_are_listed_in_the_order_configs_always_used() -> None:
    assert dataset_names("source") == (
        "gta5", "synthia", "minicity", "cityscapes", "minicity_target", "minicity_randomised",
        "folder",
    )  # fmt: skip
    assert dataset_names("target") == ("minicity", "cityscapes", "folder")
    assert dataset_names("scored") == ("gta5", "synthia", "minicity", "cityscapes", "folder")
    with pytest.raises(ApodaError) as caught:
        get_dataset("gta5", "target", "data.target")
    assert str(caught.value) == (
        "data.target: expected one of minicity, cityscapes, folder; got 'gta5' "
        "('gta5' cannot be a target)"
    )
    with pytest.raises(ApodaError, match=r"roles must be among \('source', 'target'\)"):
        register_dataset("x", roles=("val",))


USER_DATASET = """
from apoda.data.gta5 import GTA5Dataset
from apoda.registry import register_dataset


@register_dataset("renamed_gta5")
def build(root, split, scheme, **options):
    return GTA5Dataset(root / "inner", scheme, **options)
"""


def test_a_dataset_in_a_users_file_is_a_runs_source_and_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DATASETS, "_entries", {n: DATASETS.get(n) for n in DATASETS.names()})
    (tmp_path / "mine.py").write_text(USER_DATASET)
    make_gta5(tmp_path / "src" / "inner", n=2)
    cs = make_cityscapes(make_cityscapes(tmp_path / "cs"), "train", labels=False)
    config = load_config(
        None,
        [
            f"imports=[{tmp_path / 'mine.py'}]",
            "data.source=renamed_gta5",
            f"data.source_root={tmp_path / 'src'}",
            "data.target=cityscapes",
            f"data.target_root={cs}",
            "data.source_size=[4,3]",
        ],
    )
    run = build_run_data(config)
    assert isinstance(run.source, GTA5Dataset) and len(run.source) == 2
    assert isinstance(run.val, CityscapesDataset) and run.val.label_full_res
    dataset, split = dataset_for("renamed_gta5", str(tmp_path / "src"), None, CITYSCAPES19, config)
    assert (split, dataset.size, dataset.root) == ("train", (4, 3), tmp_path / "src" / "inner")
    assert dataset_names("source")[-1] == "renamed_gta5"
    with pytest.raises(ApodaError, match="'renamed_gta5' cannot be a target"):
        load_config(None, [f"imports=[{tmp_path / 'mine.py'}]", "data.target=renamed_gta5"])


def test_minicity_is_one_folder_read_in_two_layouts(tmp_path: Path) -> None:
    make_gta5(tmp_path / "mini" / "source", n=2)
    make_cityscapes(tmp_path / "mini" / "target")
    mini = tmp_path / "mini"
    assert isinstance(build_dataset("minicity", mini, "source", CITYSCAPES19), GTA5Dataset)
    val = build_dataset("minicity", mini, "val", CITYSCAPES19)
    assert isinstance(val, CityscapesDataset) and val.root == mini / "target"
    with pytest.raises(ApodaError, match="is not a MiniCity folder"):
        DATASETS.get("minicity").locate(Config().data, str(tmp_path))  # type: ignore[misc]
