"""Class statistics of a tiny GTA5-layout dataset: exact fractions, ignore share, tail classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apoda.data import CITYSCAPES19, SYNTHIA16, CityscapesDataset, GTA5Dataset
from apoda.data.stats import compute_stats
from apoda.errors import ApodaError


def _label(counts: dict[int, int]) -> np.ndarray:
    """A 10x10 map of Cityscapes ids holding exactly ``counts`` pixels of each id."""
    flat = np.concatenate([np.full(n, i, np.uint8) for i, n in counts.items()])
    assert flat.size == 100
    return np.random.default_rng(0).permutation(flat).reshape(10, 10)


def make_dataset(root: Path) -> Path:
    # Cityscapes ids: 7 road, 23 sky, 26 car, 33 bicycle, 0 unlabelled, 1 ego vehicle.
    labels = [
        {7: 60, 23: 30, 26: 6, 33: 1, 0: 3},
        {7: 50, 23: 40, 26: 3, 1: 7},
    ]
    for k, counts in enumerate(labels):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "images" / f"{k:05d}.png")
        Image.fromarray(_label(counts)).convert("P").save(root / "labels" / f"{k:05d}.png")
    return root


def test_compute_stats_exact_fractions(tmp_path: Path) -> None:
    ds = GTA5Dataset(make_dataset(tmp_path / "g"), CITYSCAPES19, size=(5, 5))
    stats = compute_stats(ds, "gta5", "train")
    frac = stats["pixel_fraction"]
    assert stats["num_images"] == 2 and stats["dataset"] == "gta5" and stats["split"] == "train"
    assert stats["root"] == str(tmp_path / "g")
    assert stats["class_names"] == list(CITYSCAPES19.class_names)
    assert frac["road"] == pytest.approx(110 / 190)
    assert frac["sky"] == pytest.approx(70 / 190)
    assert frac["car"] == pytest.approx(9 / 190)
    assert frac["bicycle"] == pytest.approx(1 / 190)
    assert sum(frac.values()) == pytest.approx(1.0)
    assert stats["ignored_fraction"] == pytest.approx(10 / 200)
    absent = [c for c in CITYSCAPES19.class_names if c not in ("road", "sky", "car")]
    assert stats["tail_classes"] == absent  # bicycle (0.5%) and every absent class
    wider = compute_stats(ds, "gta5", "train", threshold=0.05)
    assert "car" in wider["tail_classes"] and "sky" not in wider["tail_classes"]


def test_compute_stats_in_another_scheme_and_without_labels(tmp_path: Path) -> None:
    ds = GTA5Dataset(make_dataset(tmp_path / "g"), SYNTHIA16)
    stats = compute_stats(ds, "gta5", "train")
    assert len(stats["pixel_fraction"]) == 16
    assert stats["pixel_fraction"]["bicycle"] == pytest.approx(1 / 190)
    city = tmp_path / "cs" / "leftImg8bit" / "train" / "ulm"
    city.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(city / "ulm_000000_000001_leftImg8bit.png")
    target = CityscapesDataset(tmp_path / "cs", CITYSCAPES19, split="train", labelled=False)
    with pytest.raises(ApodaError, match="no labelled pixels"):
        compute_stats(target, "cityscapes", "train")
