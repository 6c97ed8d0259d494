"""SYNTHIA-RAND-CITYSCAPES: ``RGB/NNNNNNN.png`` with 16-bit ``GT/LABELS/NNNNNNN.png``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apoda.data.classes import SYNTHIA_LABEL_IDS, ClassScheme
from apoda.data.io import DatasetOptions, SegmentationDataset, pair_by_name, read_synthia_label

if TYPE_CHECKING:
    from typing_extensions import Unpack


class SynthiaDataset(SegmentationDataset):
    """SYNTHIA frames; the class id (red channel of the 16-bit label) is mapped with the scheme's
    ``synthia_lut``, so the same files serve a 16-class or a 19-slot head."""

    layout = "SYNTHIA layout ROOT/RGB/*.png and ROOT/GT/LABELS/*.png"

    def __init__(
        self,
        root: str | Path,
        scheme: ClassScheme,
        **options: Unpack[DatasetOptions],
    ) -> None:
        self._lut = scheme.lut("SYNTHIA")
        super().__init__(root, scheme, **options)

    def _find_pairs(self) -> list[tuple[Path, Path | None]]:
        return pair_by_name(self.root, self.root / "RGB", self.root / "GT" / "LABELS", self.layout)

    def _read_raw_label(self, path: Path) -> np.ndarray:
        return self._map_ids(
            read_synthia_label(path), self._lut, SYNTHIA_LABEL_IDS, "SYNTHIA", path
        )
