"""MiniCity as plain folders, the worked example of one's own data: its 19 classes merged into
the 7 Cityscapes categories, written in the folder layout (`apoda.data.folder`) with a
classes.yaml, as a labelled source and a target whose train split has no labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS
from PIL import Image
from tqdm import tqdm

from apoda.data.cityscapes import CityscapesDataset
from apoda.data.classes import CITYSCAPES19, IGNORE_INDEX, palette_of
from apoda.data.folder import CLASSES_FILE, IMAGES, LABELS, ClassList, parse_classes
from apoda.data.gta5 import GTA5Dataset
from apoda.data.io import SegmentationDataset, read_label_indices
from apoda.errors import ApodaError

CATEGORIES: dict[str, tuple[int, int, int]] = {
    "flat": (128, 64, 128),
    "construction": (70, 70, 70),
    "object": (220, 220, 0),
    "nature": (107, 142, 35),
    "sky": (70, 130, 180),
    "human": (220, 20, 60),
    "vehicle": (0, 0, 142),
}
"""The Cityscapes categories of the 19 train classes, each in the colour of one of its classes."""


def category_classes() -> ClassList:
    """The classes.yaml of the example: the 7 categories as index labels, 255 ignored."""
    entries = [
        {"name": name, "index": i, "color": list(color)}
        for i, (name, color) in enumerate(CATEGORIES.items())
    ]
    data = {"labels": "index", "ignore": IGNORE_INDEX, "classes": entries}
    return parse_classes(data, "MiniCity's categories")


def _category_lut() -> np.ndarray:
    """uint8[256]: Cityscapes label id -> category index (train classes only; others 255)."""
    names = list(CATEGORIES)
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in _CITYSCAPES_LABELS:
        if 0 <= label.trainId < IGNORE_INDEX and label.id >= 0:
            lut[label.id] = names.index(label.category)
    return lut


def _prepare(root: Path) -> None:
    """Empty `root` for writing, refusing a folder that is not an earlier export."""
    if root.exists():
        if not (root / CLASSES_FILE).is_file():
            raise ApodaError(
                f"{root} exists and is not a folder dataset written before (no {CLASSES_FILE}); "
                "choose another --out"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True)


def write_minicity_folder(minicity: Path, out: Path, progress: bool = True) -> tuple[Path, Path]:
    """Write a MiniCity folder (what `ensure_minicity` makes) as the folder datasets
    ``OUT/source`` (train, labelled) and ``OUT/target`` (train unlabelled, val labelled)."""
    classes, lut = category_classes(), _category_lut()
    palette = palette_of(classes.colors).ravel().tolist()
    source, target = out / "source", out / "target"
    parts: list[tuple[Path, str, SegmentationDataset]] = [
        (source, "train", GTA5Dataset(minicity / "source", CITYSCAPES19)),
        (target, "train", CityscapesDataset(minicity / "target", CITYSCAPES19, labelled=False)),
        (target, "val", CityscapesDataset(minicity / "target", CITYSCAPES19, split="val")),
    ]
    for root in (source, target):
        _prepare(root)
        classes.write(root / CLASSES_FILE)
    total = sum(len(dataset) for _, _, dataset in parts)
    bar = tqdm(total=total, desc=f"MiniCity folders {out}", unit="img", disable=not progress)
    for root, split, dataset in parts:
        (root / IMAGES / split).mkdir(parents=True)
        for i in range(len(dataset)):
            image = dataset.image_path(i)
            name = image.name.removesuffix("_leftImg8bit.png").removesuffix(".png") + ".png"
            shutil.copyfile(image, root / IMAGES / split / name)
            label_path = dataset.label_path(i)
            if label_path is not None:  # the target's train images come unlabelled
                label = Image.fromarray(lut[read_label_indices(label_path)])
                label.putpalette(palette)
                (root / LABELS / split).mkdir(parents=True, exist_ok=True)
                label.save(root / LABELS / split / name)
            bar.update()
    bar.close()
    return source, target
