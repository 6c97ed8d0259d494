"""GTA5: ``images/NNNNN.png`` with palette ``labels/NNNNN.png`` whose indices are Cityscapes ids."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apoda.data.classes import CITYSCAPES_LABEL_IDS, ClassScheme
from apoda.data.io import DatasetOptions, SegmentationDataset, pair_by_name, read_label_indices
from apoda.errors import ApodaError

if TYPE_CHECKING:
    from typing_extensions import Unpack


class GTA5Dataset(SegmentationDataset):
    """GTA5 frames. Without ``list_file`` every image in ``images/`` is used and must have its
    label; with one (a file name per line), listed pairs missing on disk are skipped with one
    warning that counts them (the released list names 24,966 frames, 24,941 pairs exist)."""

    layout = "GTA5 layout ROOT/images/*.png and ROOT/labels/*.png"

    def __init__(
        self,
        root: str | Path,
        scheme: ClassScheme,
        *,
        list_file: str | Path | None = None,
        **options: Unpack[DatasetOptions],
    ) -> None:
        self.list_file = None if list_file is None else Path(list_file)
        self._lut = scheme.lut("Cityscapes")
        super().__init__(root, scheme, **options)

    def _find_pairs(self) -> list[tuple[Path, Path | None]]:
        image_dir, label_dir = self.root / "images", self.root / "labels"
        if self.list_file is None:
            return pair_by_name(self.root, image_dir, label_dir, self.layout)
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise ApodaError(f"{self.root}: expected {self.layout}")
        if not self.list_file.is_file():
            raise ApodaError(f"missing list file {self.list_file}; expected one file name a line")
        names = [line.strip() for line in self.list_file.read_text().splitlines() if line.strip()]
        pairs: list[tuple[Path, Path | None]] = []
        for name in names:
            image, label = image_dir / name, label_dir / name
            if image.is_file() and label.is_file():
                pairs.append((image, label))
        skipped = len(names) - len(pairs)
        if skipped:
            warnings.warn(
                f"{self.list_file}: skipped {skipped} of {len(names)} listed pairs missing on "
                f"disk under {self.root}",
                stacklevel=4,
            )
        return pairs

    def _read_raw_label(self, path: Path) -> np.ndarray:
        raw = read_label_indices(path)
        return self._map_ids(raw, self._lut, CITYSCAPES_LABEL_IDS, "GTA5", path)
