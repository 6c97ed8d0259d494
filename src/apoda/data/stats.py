"""Class distribution of a dataset's labels (the paper's Fig. 4 and 5) and its head/tail split."""

from __future__ import annotations

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
