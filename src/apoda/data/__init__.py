"""Datasets in their real on-disk layouts, class schemes, transforms and label statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apoda.data.cityscapes import CityscapesDataset
from apoda.data.classes import (
    CITYSCAPES19,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    SYNTHIA16,
    ClassScheme,
    colorize,
    get_scheme,
    tail_classes,
)
from apoda.data.folder import ClassList
from apoda.data.gta5 import GTA5Dataset
from apoda.data.io import SegmentationDataset
from apoda.data.synthia import SynthiaDataset
from apoda.data.transforms import AugmentConfig, Normalisation
from apoda.errors import ApodaError
from apoda.registry import DATASETS

__all__ = [
    "CITYSCAPES19",
    "CITYSCAPES_PALETTE",
    "IGNORE_INDEX",
    "SYNTHIA16",
    "AugmentConfig",
    "CityscapesDataset",
    "ClassScheme",
    "GTA5Dataset",
    "Normalisation",
    "SegmentationDataset",
    "SynthiaDataset",
    "build_dataset",
    "colorize",
    "get_scheme",
    "tail_classes",
]


def build_dataset(
    name: str, root: str | Path, split: str, scheme: ClassScheme, **kwargs: Any
) -> SegmentationDataset:
    """Build one split of a registered dataset (apoda.registry.DATASETS) from its folder: GTA5
    and SYNTHIA have a single split, "train" (the whole folder); Cityscapes takes "train", "val"
    or "test"; MiniCity's folder "source" or its target's splits; a folder dataset reads its
    labels with its own classes.yaml (which must name `scheme`'s classes). ``kwargs`` go to the
    dataset."""
    if name not in DATASETS:
        raise ApodaError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    entry, root = DATASETS.get(name), Path(root)
    labels = scheme if entry.classes is None else entry.classes(root, ClassList.from_scheme(scheme))
    return entry.build(root, split, labels, **kwargs)
