"""Class distribution of a dataset's labels (the paper's Fig. 4 and 5) and its head/tail split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
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


def plot_class_distribution(stats: list[dict[str, Any]], path: str | Path) -> Path:
    """Bar chart (log scale) of the class fractions of one or more datasets side by side.

    Classes are sorted by the first dataset's fraction; that dataset's tail classes are hatched
    and their names starred. Returns the written path.
    """
    if not stats:
        raise ApodaError("plot_class_distribution needs at least one stats dict")
    names = list(stats[0]["class_names"])
    for s in stats[1:]:
        if list(s["class_names"]) != names:
            raise ApodaError(
                f"cannot plot {s['dataset']} beside {stats[0]['dataset']}: different class lists"
            )
    first = stats[0]["pixel_fraction"]
    order = sorted(names, key=lambda c: -first[c])
    tail = set(stats[0]["tail_classes"])
    x = np.arange(len(order))
    width = 0.8 / len(stats)
    # A bare Figure renders with Agg and leaves pyplot's global state alone.
    fig = Figure(figsize=(max(6.0, 0.5 * len(order)), 4.0))
    ax = fig.subplots()
    for k, s in enumerate(stats):
        values = [100.0 * s["pixel_fraction"][c] for c in order]
        bars = ax.bar(x + (k - (len(stats) - 1) / 2) * width, values, width, label=s["dataset"])
        for bar, c in zip(bars, order, strict=True):
            if c in tail:
                bar.set_hatch("//")
    ax.set_yscale("log")
    ax.set_ylabel("share of labelled pixels (%)")
    ax.set_xticks(x, [f"{c}*" if c in tail else c for c in order], rotation=60, ha="right")
    ax.set_title(
        f"Class distribution (* tail: under {100 * stats[0]['tail_threshold']:g}% of "
        f"{stats[0]['dataset']} pixels)"
    )
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
