"""Datasets in their real on-disk layouts, class schemes, transforms and label statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

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
from apoda.data.gta5 import GTA5Dataset
from apoda.data.io import SegmentationDataset
from apoda.data.synthia import SynthiaDataset
from apoda.data.transforms import AugmentConfig, Normalisation
from apoda.errors import ApodaError

DATASET_NAMES = ("gta5", "synthia", "cityscapes")

__all__ = [
    "CITYSCAPES19",
    "CITYSCAPES_PALETTE",
    "DATASET_NAMES",
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
    name: Literal["gta5", "synthia", "cityscapes"],
    root: str | Path,
    split: str,
    scheme: ClassScheme,
    **kwargs: Any,
) -> SegmentationDataset:
    """Build a dataset by name. GTA5 and SYNTHIA have a single split, "train" (the whole
    folder); Cityscapes takes "train", "val" or "test". ``kwargs`` go to the constructor."""
    if name == "cityscapes":
        return CityscapesDataset(root, scheme, split=split, **kwargs)
    if name not in ("gta5", "synthia"):
        raise ApodaError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if split != "train":
        raise ApodaError(f"{name} has a single split 'train' (the whole folder), got {split!r}")
    if name == "gta5":
        return GTA5Dataset(root, scheme, **kwargs)
    return SynthiaDataset(root, scheme, **kwargs)
