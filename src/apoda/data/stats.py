"""Class distribution of a dataset's labels (the paper's Fig. 4 and 5) and its head/tail split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from apoda.data.classes import tail_classes
from apoda.data.io import SegmentationDataset
from apoda.errors import ApodaError


def compute_stats(
    dataset: SegmentationDataset,
    name: str,
    split: str,
    threshold: float = 0.01,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-class fraction of the labelled pixels at full label resolution.

    Fractions are over non-ignored pixels and sum to 1; ``ignored_fraction`` is over all pixels;
    classes under ``threshold`` are the tail classes.
    """
    scheme = dataset.scheme
    counts = np.zeros(scheme.num_classes + 1, dtype=np.int64)
    for i in tqdm(range(len(dataset)), desc=f"stats {name}/{split}", disable=not progress):
        label = dataset.read_label(i).ravel()
        # Everything outside [0, C) is ignore: fold it into the last bin.
        label = np.where(label < scheme.num_classes, label, scheme.num_classes)
        counts += np.bincount(label, minlength=scheme.num_classes + 1)
    total = int(counts.sum())
    labelled = total - int(counts[-1])
    if labelled == 0:
        raise ApodaError(f"{dataset.root}: no labelled pixels in {len(dataset)} labels of {name}")
    fraction = {
        c: float(n) / labelled for c, n in zip(scheme.class_names, counts[:-1], strict=True)
    }
    return {
        "dataset": name,
        "root": str(dataset.root),
        "split": split,
        "num_images": len(dataset),
        "class_names": list(scheme.class_names),
        "pixel_fraction": fraction,
        "ignored_fraction": float(counts[-1]) / total,
        "tail_threshold": threshold,
        "tail_classes": tail_classes(fraction, threshold),
    }


def cell_ownership(label: np.ndarray, num_classes: int, stride: int) -> np.ndarray:
    """Per class: [pixels in stride x stride cells that the class owns (is the majority of the
    labelled pixels, ties to the lower index), all its pixels] for one label map. A pointwise
    feature perturbation acts on cells: a class that owns none has no feature of its own."""
    height, width = (label.shape[0] // stride) * stride, (label.shape[1] // stride) * stride
    cells = label[:height, :width].reshape(height // stride, stride, width // stride, stride)
    cells = cells.transpose(0, 2, 1, 3).reshape(-1, stride * stride).astype(np.int64)
    cells = np.where(cells < num_classes, cells, num_classes)  # ignore -> the last bin
    counts = np.zeros((cells.shape[0], num_classes + 1), dtype=np.int64)
    np.add.at(counts, (np.arange(cells.shape[0])[:, None], cells), 1)
    owner = counts[:, :num_classes].argmax(1)
    has_labels = counts[:, :num_classes].sum(1) > 0
    result = np.zeros((num_classes, 2), dtype=np.int64)
    result[:, 1] = counts[:, :num_classes].sum(0)
    owned = counts[np.arange(len(owner)), owner] * has_labels
    np.add.at(result[:, 0], owner, owned)
    return result


def cell_share(
    dataset: SegmentationDataset, stride: int, progress: bool = False
) -> dict[str, float | None]:
    """Each class's share of its pixels that lie in feature cells it owns (see
    `cell_ownership`), over a dataset's labels at file resolution; None for absent classes."""
    if stride < 1:
        raise ApodaError(f"cell stride must be at least 1, got {stride}")
    scheme = dataset.scheme
    totals = np.zeros((scheme.num_classes, 2), dtype=np.int64)
    for i in tqdm(range(len(dataset)), desc=f"cells /{stride}", disable=not progress):
        totals += cell_ownership(dataset.read_label(i), scheme.num_classes, stride)
    return {
        name: (float(owned) / float(total) if total else None)
        for name, (owned, total) in zip(scheme.class_names, totals, strict=True)
    }


def run_tail_classes(
    configured: Sequence[str] | None,
    listed: Sequence[str] | None,
    measured: Sequence[str],
    class_names: Sequence[str],
) -> list[str]:
    """A run's tail classes: the config's `data.tail_classes` (`configured`), else the class
    list's `tail` (`listed`), else the source statistics' (`measured`); unknown names: an error."""
    named = configured or listed
    tail = list(measured if named is None else named)
    unknown = sorted(set(tail) - set(class_names))
    if unknown:
        raise ApodaError(
            f"data.tail_classes names unknown classes {unknown}; valid: {list(class_names)}"
        )
    return tail
