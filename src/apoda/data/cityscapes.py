"""Cityscapes: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine`` label ids."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apoda.data.classes import CITYSCAPES_LABEL_IDS, ClassScheme
from apoda.data.io import DatasetOptions, SegmentationDataset, read_label_indices
from apoda.errors import ApodaError

if TYPE_CHECKING:
    from typing_extensions import Unpack

SPLITS = ("train", "val", "test")
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


class CityscapesDataset(SegmentationDataset):
    """Cityscapes images of one split. Labels are the ``_gtFine_labelIds.png`` files (the colour,
    instance and polygon files beside them are not used); ``labelled=False`` needs no gtFine at
    all and gives all-ignore labels (the unlabelled target domain of adaptation)."""

    layout = (
        "Cityscapes layout ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png and "
        "ROOT/gtFine/SPLIT/CITY/*_gtFine_labelIds.png"
    )

    def __init__(
        self,
        root: str | Path,
        scheme: ClassScheme,
        *,
        split: str = "train",
        labelled: bool = True,
        **options: Unpack[DatasetOptions],
    ) -> None:
        if split not in SPLITS:
            raise ApodaError(f"unknown Cityscapes split {split!r}; expected one of {SPLITS}")
        self.split = split
        self.labelled = labelled
        self._lut = scheme.lut("Cityscapes")
        super().__init__(root, scheme, **options)

    def _find_pairs(self) -> list[tuple[Path, Path | None]]:
        image_dir = self.root / "leftImg8bit" / self.split
        label_dir = self.root / "gtFine" / self.split
        needed = [image_dir, label_dir] if self.labelled else [image_dir]
        missing = [str(d) for d in needed if not d.is_dir()]
        if missing:
            raise ApodaError(f"{self.root}: expected {self.layout} (missing {', '.join(missing)})")
        images = sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
        if not self.labelled:
            return [(p, None) for p in images]
        labels = {p.relative_to(label_dir) for p in label_dir.glob(f"*/*{_LABEL_SUFFIX}")}
        pairs: list[tuple[Path, Path | None]] = []
        unlabelled: list[Path] = []
        for image in images:
            rel = image.relative_to(image_dir)
            label_rel = rel.with_name(rel.name[: -len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX)
            if label_rel in labels:
                pairs.append((image, label_dir / label_rel))
            else:
                unlabelled.append(label_dir / label_rel)
        if unlabelled:
            raise ApodaError(
                f"{len(unlabelled)} of {len(images)} images in {image_dir} have no label "
                f"(first missing: {unlabelled[0]}); expected {self.layout}, "
                "or evaluate on a split with labels"
            )
        return pairs

    def _read_raw_label(self, path: Path) -> np.ndarray:
        raw = read_label_indices(path)
        return self._map_ids(raw, self._lut, CITYSCAPES_LABEL_IDS, "Cityscapes", path)

    def _item_name(self, image_path: Path) -> str:
        return image_path.name[: -len(_IMAGE_SUFFIX)]
