"""Rare-class sampling (DAFormer, Hoyer et al., CVPR 2022): source images drawn for a class
drawn with probability p(c) proportional to exp((1 - f_c) / T), f_c the class's share of the
source's labelled pixels; the image is drawn among those holding at least a minimum number of
that class's pixels. A data option any method can use, step 1 included."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from apoda.data.io import SegmentationDataset
from apoda.errors import ApodaError

GTA5_LABEL_PIXELS = 1914 * 1052
"""The label size DAFormer's `min_pixels` (3000) is counted at; apoda scales it to each
label's own size."""


DAFORMER_CROP_PIXELS = 512 * 512
"""The crop DAFormer counts `min_pixels x min_crop_ratio` in; apoda scales it to its crop."""


def crop_min_pixels(min_pixels: int, min_crop_ratio: float, crop: tuple[int, int]) -> float:
    """The pixels of its class a rare-class image's crop must hold more than (DAFormer's
    `min_pixels x min_crop_ratio` in a 512x512 crop, scaled to `crop`'s (width, height))."""
    return min_pixels * min_crop_ratio * crop[0] * crop[1] / DAFORMER_CROP_PIXELS


def class_pixel_counts(dataset: SegmentationDataset, progress: bool = True) -> np.ndarray:
    """`[N, C + 1]` pixel counts per image and class (the last column: ignored pixels)."""
    classes = dataset.scheme.num_classes
    counts = np.zeros((len(dataset), classes + 1), dtype=np.int64)
    for i in tqdm(range(len(dataset)), desc="class pixels per image", disable=not progress):
        label = dataset.read_label(i).ravel()
        counts[i] = np.bincount(np.where(label < classes, label, classes), minlength=classes + 1)
    return counts


def class_probabilities(pixels_per_class: np.ndarray, temperature: float) -> np.ndarray:
    """p(c) = softmax((1 - f_c) / T) over the classes with labelled pixels (0 for the others);
    f_c = the class's share of the labelled pixels."""
    present = pixels_per_class > 0
    if not present.any():
        raise ApodaError("rare-class sampling: the source has no labelled pixels")
    frequency = pixels_per_class[present] / pixels_per_class[present].sum()
    logits = (1.0 - frequency) / temperature
    weights = np.exp(logits - logits.max())
    probabilities = np.zeros(len(pixels_per_class))
    probabilities[present] = weights / weights.sum()
    return probabilities


@dataclass(frozen=True)
class RareClassSampling:
    """The class probabilities and, per class, the images that hold enough of its pixels."""

    probabilities: np.ndarray
    images_with_class: tuple[tuple[int, ...], ...]

    @classmethod
    def from_counts(
        cls, counts: np.ndarray, temperature: float, min_pixels: int
    ) -> RareClassSampling:
        """From `class_pixel_counts`; `min_pixels` is counted at GTA5's label size and scaled
        to each label's own (an image holds a class with more pixels than that). A class no
        image holds is never drawn (DAFormer stops there instead)."""
        pixels = counts[:, :-1]
        holding = pixels > (min_pixels * counts.sum(1) / GTA5_LABEL_PIXELS)[:, None]
        probabilities = class_probabilities(pixels.sum(0), temperature)
        probabilities = np.where(holding.any(0), probabilities, 0.0)
        probabilities /= probabilities.sum()
        images = tuple(tuple(np.flatnonzero(column).tolist()) for column in holding.T)
        return cls(probabilities, images)

    def draw_with_classes(self, generator: torch.Generator, n: int) -> list[tuple[int, int]]:
        """`n` (image index, class) pairs: a class by its probability, then one of its images
        uniformly."""
        p = torch.as_tensor(self.probabilities, dtype=torch.float64)
        classes = torch.multinomial(p, n, replacement=True, generator=generator).tolist()
        picks = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        return [
            (self.images_with_class[c][int(u * len(self.images_with_class[c]))], c)
            for c, u in zip(classes, picks, strict=True)
        ]

    def draw(self, generator: torch.Generator, n: int) -> list[int]:
        """`draw_with_classes`'s image indices alone."""
        return [i for i, _ in self.draw_with_classes(generator, n)]


def cached_class_counts(dataset: SegmentationDataset, cache: os.PathLike[str]) -> np.ndarray:
    """`class_pixel_counts` of a dataset, cached under `cache` by its files and size."""
    digest = hashlib.sha1(dataset.identity().encode()).hexdigest()[:16]
    path = os.path.join(cache, "stats", f"class-pixels-{digest}.json")
    if os.path.isfile(path):
        with open(path) as fh:
            return np.asarray(json.load(fh), dtype=np.int64)
    counts = class_pixel_counts(dataset)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"  # parallel runs may count at once
    with open(tmp, "w") as fh:
        json.dump(counts.tolist(), fh)
    os.replace(tmp, path)
    return counts
