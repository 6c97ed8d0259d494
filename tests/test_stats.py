"""Class statistics of a tiny GTA5-layout dataset: exact fractions, ignore share, tail classes."""

from __future__ import annotations

import json
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


def test_cell_ownership_matches_a_direct_count() -> None:
    """Per class: pixels in the cells where it is the labelled majority (ties to the lower
    index, ignore skipped, partial cells at the border dropped), against a plain loop."""
    from apoda.data.stats import cell_ownership

    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (18, 26)).astype(np.uint8)  # 18x26: partial cells at the edge
    label[0:3, 0:5] = 255
    label[8:12, 8:12] = 255  # one cell all ignore: owned by nobody
    expected = np.zeros((4, 2), dtype=np.int64)
    for top in range(0, 16, 4):
        for left in range(0, 24, 4):
            cell = label[top : top + 4, left : left + 4].ravel()
            counts = np.bincount(cell[cell < 4], minlength=4)
            if counts.sum():
                expected[int(np.argmax(counts)), 0] += counts.max()
            expected[:, 1] += counts
    assert cell_ownership(label, 4, 4).tolist() == expected.tolist()
    whole = np.zeros((8, 8), dtype=np.uint8)
    whole[:2, :2] = 1  # 4 pixels of class 1 in an 8x8 cell of class 0: owned at stride 2 only
    assert cell_ownership(whole, 2, 8)[1].tolist() == [0, 4]
    assert cell_ownership(whole, 2, 2)[1].tolist() == [4, 4]


def test_data_stats_cells_prints_and_saves_the_share(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from apoda.cli import main
    from apoda.data.minicity import MiniCityConfig, ensure_minicity

    small = MiniCityConfig(n_source=4, n_target_train=2, n_target_val=2, height=16, width=32)
    root = ensure_minicity(small, root=tmp_path / "mini")
    out = tmp_path / "stats.json"
    assert main(["data", "stats", "minicity", str(root), "--cells", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "in owned 8x8 cells" in printed
    stats = json.loads(out.read_text())
    assert stats["cell_stride"] == 8
    shares = [v for v in stats["cell_share"].values() if v is not None]
    assert shares and all(0.0 <= v <= 1.0 for v in shares)
