"""Rare-class sampling: the class probabilities follow p(c) ~ exp((1 - f_c) / T), images are drawn
for their class with the minimum pixel count scaled to the label size, draws follow the
probabilities (a seeded frequency test), a drawn image's crop is re-drawn to hold its class, and
a run with it trains and resumes its batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from apoda.cli import main
from apoda.config import load_config
from apoda.configs import resolve_config
from apoda.data.sampling import GTA5_LABEL_PIXELS, RareClassSampling, class_probabilities
from apoda.engine.data import CyclingLoader, build_run_data, source_draw
from conftest import TINY


def test_class_probabilities_follow_the_formula() -> None:
    pixels = np.array([700, 200, 90, 10, 0])
    p = class_probabilities(pixels, temperature=0.01)
    f = pixels[:4] / 1000
    direct = [math.exp((1 - fc) / 0.01) for fc in f]
    expected = [d / sum(direct) for d in direct]
    assert np.allclose(p[:4], expected, rtol=1e-12, atol=0) and p[4] == 0.0
    assert p[3] > p[2] > p[1] > p[0]  # the rarer, the likelier


def _counts(classes_per_image: list[int], pixels: int, size: int, num_classes: int) -> np.ndarray:
    """Images of `size` pixels holding `pixels` pixels of one class each, the rest ignored."""
    counts = np.zeros((len(classes_per_image), num_classes + 1), dtype=np.int64)
    for i, c in enumerate(classes_per_image):
        counts[i, c], counts[i, -1] = pixels, size - pixels
    return counts


def test_draws_follow_the_class_probabilities() -> None:
    size = 64 * 128
    counts = _counts([0] * 6 + [1] * 3 + [2], pixels=500, size=size, num_classes=3)
    counts[:6, 0] += 3000  # class 0 is frequent, 2 rare
    counts[:6, -1] -= 3000
    sampling = RareClassSampling.from_counts(counts, temperature=0.5, min_pixels=3000)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    drawn = sampling.draw(gen, n)
    image_class = np.array([0] * 6 + [1] * 3 + [2])
    share = np.bincount(image_class[drawn], minlength=3) / n
    sigma = np.sqrt(sampling.probabilities * (1 - sampling.probabilities) / n)
    assert (np.abs(share - sampling.probabilities) < 4 * sigma).all(), (share, sigma)
    # within a class, its images are drawn uniformly: class 1's three images a third each
    class1 = np.bincount(np.array(drawn)[image_class[drawn] == 1], minlength=9)[6:9]
    assert np.allclose(class1 / class1.sum(), 1 / 3, atol=4 * np.sqrt(2 / 9 / class1.sum()))


def test_the_minimum_pixel_count_is_scaled_to_the_label_size() -> None:
    size = 64 * 128
    threshold = 3000 * size / GTA5_LABEL_PIXELS  # 12.2 pixels at 64x128
    assert 12 < threshold < 13
    counts = _counts([0, 1, 1], pixels=12, size=size, num_classes=2)
    counts[2, 1], counts[2, -1] = 13, size - 13
    sampling = RareClassSampling.from_counts(counts, temperature=0.01, min_pixels=3000)
    assert sampling.images_with_class == ((), (2,))  # 12 pixels are too few, 13 enough
    assert sampling.probabilities.tolist() == [0.0, 1.0]  # a class no image holds: never drawn


def test_a_loader_with_draws_resumes_the_same_batches() -> None:
    dataset = [{"i": torch.tensor(i)} for i in range(12)]
    sampling = RareClassSampling(np.array([0.25, 0.75]), ((0, 1, 2), (5, 6, 7, 8)))
    loader = CyclingLoader(dataset, 4, seed=3, draw=sampling.draw)  # type: ignore[arg-type]
    batches = [next(loader)["i"].tolist() for _ in range(5)]
    assert {i for batch in batches for i in batch} <= {0, 1, 2, 5, 6, 7, 8}
    again = CyclingLoader(dataset, 4, seed=3, draw=sampling.draw)  # type: ignore[arg-type]
    again.load_state_dict({"epoch": 0, "position": 2})
    assert [next(again)["i"].tolist() for _ in range(3)] == batches[2:]


def test_a_rare_class_draw_brings_its_class_into_the_crop() -> None:
    """With `data.rcs_min_crop_ratio` the source loader's draw carries the class it drew, and the
    dataset re-draws that item's crop until the class holds more than 3000 x ratio pixels
    (counted in a 512x512 crop, here 16x16: 2.9 x ratio); the first crop is the plain one."""
    overrides = [*TINY, "data.rare_class_sampling=true", "data.crop=[16,16]"]
    config = load_config(resolve_config("minicity/source_only"), overrides)
    assert source_draw(config, build_run_data(config).source) is not None
    config = load_config(
        resolve_config("minicity/source_only"), [*overrides, "data.rcs_min_crop_ratio=3"]
    )
    source = build_run_data(config).source
    draw = source_draw(config, source)
    assert draw is not None
    keys = draw(torch.Generator().manual_seed(0), 48)
    assert all(isinstance(k, tuple) and len(k) == 2 for k in keys)
    threshold = 3000 * 3 * 16 * 16 / (512 * 512)
    held = {"plain": 0, "wanted": 0}
    for i, c in keys:
        plain, wanted = source[i]["label"], source[(i, c)]["label"]
        plain_holds = int((plain == c).sum()) > threshold
        held["plain"] += plain_holds
        held["wanted"] += int((wanted == c).sum()) > threshold
        if plain_holds:
            assert torch.equal(plain, wanted)
    assert held["wanted"] > held["plain"], held


def test_a_run_with_rare_class_sampling_trains(tmp_path: Path) -> None:
    out = tmp_path / "rcs"
    args = ["train", "minicity/source_only", *TINY, "train.iterations=2", "train.eval_every=0"]
    assert main([*args, "data.rare_class_sampling=true", "--out", str(out)]) == 0
    assert "rare_class_sampling: true" in (out / "config.yaml").read_text()
