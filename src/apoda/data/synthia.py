"""SYNTHIA-RAND-CITYSCAPES: ``RGB/NNNNNNN.png`` with 16-bit ``GT/LABELS/NNNNNNN.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apoda.data.classes import ClassScheme
from apoda.data.io import SegmentationDataset, pair_by_name, read_synthia_label
from apoda.data.transforms import AugmentConfig
from apoda.errors import ApodaError


class SynthiaDataset(SegmentationDataset):
    """SYNTHIA frames; the class id (red channel of the 16-bit label) is mapped with the scheme's
    ``synthia_lut``, so the same files serve a 16-class or a 19-slot head."""

    layout = "SYNTHIA layout ROOT/RGB/*.png and ROOT/GT/LABELS/*.png"

    def __init__(
        self,
        root: str | Path,
        scheme: ClassScheme,
        *,
        size: tuple[int, int] | None = None,
        normalisation: str = "caffe",
        augment: AugmentConfig | None = None,
        max_items: int | None = None,
        seed: int = 0,
        label_full_res: bool = False,
    ) -> None:
        if scheme.synthia_lut is None:
            raise ApodaError(f"class scheme {scheme.name!r} has no SYNTHIA id mapping")
        self._lut: np.ndarray = scheme.synthia_lut
        super().__init__(
            root,
            scheme,
            size=size,
            normalisation=normalisation,
            augment=augment,
            max_items=max_items,
            seed=seed,
            label_full_res=label_full_res,
        )

    def _find_pairs(self) -> list[tuple[Path, Path | None]]:
        return pair_by_name(self.root, self.root / "RGB", self.root / "GT" / "LABELS", self.layout)

    def _read_raw_label(self, path: Path) -> np.ndarray:
        return self._lut[read_synthia_label(path)]
