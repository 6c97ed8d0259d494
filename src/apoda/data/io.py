"""Reading images and labels from disk, and the dataset base class the real datasets share.

Every reader turns a missing, corrupt or wrongly encoded file into an ApodaError that names the
file and what was expected, so a bad dataset fails with one readable line.
"""

from __future__ import annotations

import abc
import warnings
from pathlib import Path
from typing import Any, TypedDict

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from apoda.data.classes import IGNORE_INDEX, ClassScheme
from apoda.data.transforms import AugmentConfig, Normalisation, check_size, prepare_sample
from apoda.errors import ApodaError


class DatasetOptions(TypedDict, total=False):
    """The keyword options every dataset passes through to `SegmentationDataset`."""

    size: tuple[int, int] | None
    normalisation: str
    augment: AugmentConfig | None
    max_items: int | None
    seed: int
    label_full_res: bool


_PIL_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ApodaError(f"missing file {path}")


def _open_pil(path: str | Path, mode: str | None) -> np.ndarray:
    """Fully decode a PIL image (optionally converted to ``mode``); errors name the file."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode) if mode else _decoded_indices(img, path))
    except _PIL_ERRORS as exc:
        raise ApodaError(f"cannot read image {path}: corrupt or truncated ({exc})") from exc


def _decoded_indices(img: Image.Image, path: Path) -> Image.Image:
    if img.mode not in ("P", "L"):
        raise ApodaError(
            f"label {path}: expected a palette (P) or grayscale (L) PNG of class indices, "
            f"got mode {img.mode}"
        )
    img.load()
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] image."""
    return _open_pil(path, "RGB")


def read_label_indices(path: str | Path) -> np.ndarray:
    """uint8 [H, W] label ids of a palette or grayscale PNG: the stored indices, not colours."""
    return _open_pil(path, None)


def read_synthia_label(path: str | Path) -> np.ndarray:
    """uint16 [H, W] raw SYNTHIA class ids: the red channel of a 16-bit 3/4-channel PNG.

    OpenCV returns channels in BGR order, so red is index 2; green holds the instance id.
    """
    path = Path(path)
    _check_file(path)
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ApodaError(f"cannot read SYNTHIA label {path}: corrupt or not an image")
    channels = 1 if array.ndim == 2 else array.shape[2]
    if array.dtype != np.uint16 or channels not in (3, 4):
        bits = 8 * array.dtype.itemsize
        raise ApodaError(
            f"SYNTHIA label {path}: expected a 16-bit 3-channel PNG (class id in the red channel), "
            f"got {bits}-bit {channels}-channel"
        )
    return np.ascontiguousarray(array[:, :, 2])


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image from its header, without decoding the pixels."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            return img.size
    except _PIL_ERRORS as exc:
        raise ApodaError(f"cannot read image {path}: corrupt or truncated ({exc})") from exc


class SegmentationDataset(Dataset[dict[str, Any]], abc.ABC):
    """Image/label pairs on disk -> ``{"image": float32 [3,H,W], "label": int64 [H,W], "name"}``.

    Labels are mapped to ``scheme`` indices (255 = ignore). ``size`` is (width, height) or None to
    keep the file size; ``label_full_res`` keeps the label at file resolution while the image is
    resized (evaluation). Augmentation draws from a generator seeded by (seed, index, epoch), so
    an item is the same whenever it is read with the same epoch (see ``set_epoch``).
    Subclasses list their pairs (checking the layout) and map raw labels.
    """

    layout: str = ""
    """How the dataset's folder looks, for error messages."""

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
        self.root = Path(root)
        self.scheme = scheme
        self.size = None if size is None else check_size(tuple(size), "size")
        self.normalisation = Normalisation(normalisation)
        if label_full_res and augment is not None:
            raise ApodaError("label_full_res (evaluation) cannot be combined with augmentation")
        self.augment = augment
        self.seed = seed
        self.label_full_res = label_full_res
        self.epoch = 0
        self._warned: set[Path] = set()
        if max_items is not None and max_items < 1:
            raise ApodaError(f"max_items must be a positive integer or None, got {max_items}")
        if not self.root.is_dir():
            raise ApodaError(f"dataset root {self.root} does not exist; expected {self.layout}")
        pairs = self._find_pairs()
        if not pairs:
            raise ApodaError(f"no images found under {self.root}; expected {self.layout}")
        self._pairs = pairs[:max_items] if max_items is not None else pairs

    @abc.abstractmethod
    def _find_pairs(self) -> list[tuple[Path, Path | None]]:
        """Sorted (image, label or None) paths; raises ApodaError if the layout is wrong."""

    @abc.abstractmethod
    def _read_raw_label(self, path: Path) -> np.ndarray:
        """Read a label file and map it to uint8 scheme indices."""

    def _map_ids(
        self, raw: np.ndarray, lut: np.ndarray, known: np.ndarray, table: str, path: Path
    ) -> np.ndarray:
        """Raw label ids -> scheme indices through `lut`. Pixels whose id is not in the label
        `table` at all (`known` is False there, e.g. 200 in a Cityscapes file) become ignore like
        void ones, but are counted and warned about once per file: a broken or foreign label."""
        foreign = ~known[raw]
        if foreign.any():
            self._warn_foreign(path, int(foreign.sum()), np.unique(raw[foreign]).tolist(), table)
        return lut[raw]

    def _warn_foreign(self, path: Path, pixels: int, ids: list[Any], table: str) -> None:
        """Warn once per file that `pixels` pixels hold `ids` outside the label `table`."""
        if path in self._warned:
            return
        self._warned.add(path)
        warnings.warn(
            f"{path}: {pixels} pixels hold ids {ids[:5]} that are not in the {table} label "
            "table; they are ignored (255)",
            stacklevel=3,
        )

    def _item_name(self, image_path: Path) -> str:
        """Name of an item (used for prediction files): the image's stem by default."""
        return image_path.stem

    def identity(self) -> str:
        """What statistics computed from this dataset depend on (cache keys)."""
        return f"{self.root.resolve()}|{len(self)}|{self.scheme.name}"

    def __len__(self) -> int:
        return len(self._pairs)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws for the next pass over the data."""
        self.epoch = epoch

    def image_path(self, i: int) -> Path:
        """Path of item ``i``'s image."""
        return self._pairs[i][0]

    def label_path(self, i: int) -> Path | None:
        """Path of item ``i``'s label, None for an unlabelled dataset."""
        return self._pairs[i][1]

    def read_label(self, i: int) -> np.ndarray:
        """uint8 [H, W] scheme indices of item ``i`` at file resolution (all 255 if unlabelled)."""
        path = self.label_path(i)
        if path is None:
            width, height = image_size(self.image_path(i))
            return np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        if not path.is_file():
            raise ApodaError(f"missing label {path} for image {self.image_path(i)}")
        return self._read_raw_label(path)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item `key`: an index, or (index, class) for an item drawn for that class (rare-class
        sampling re-draws its crop until the class is in it, `AugmentConfig.min_class_pixels`)."""
        i, wanted = key if isinstance(key, tuple) else (key, None)
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for a dataset of {len(self)}")
        i %= len(self)
        image = read_rgb(self.image_path(i))
        label = self.read_label(i)
        if label.shape != image.shape[:2]:
            raise ApodaError(
                f"image {self.image_path(i)} is {image.shape[1]}x{image.shape[0]} but its label "
                f"{self.label_path(i)} is {label.shape[1]}x{label.shape[0]}; expected equal sizes"
            )
        rng = np.random.default_rng([self.seed, i, self.epoch])
        image_t, label_t = prepare_sample(
            image,
            label,
            size=self.size,
            normalisation=self.normalisation,
            augment=self.augment,
            rng=rng,
            label_full_res=self.label_full_res,
            wanted=wanted,
        )
        return {"image": image_t, "label": label_t, "name": self._item_name(self.image_path(i))}


def pair_by_name(
    root: Path, image_dir: Path, label_dir: Path, layout: str
) -> list[tuple[Path, Path | None]]:
    """Pair every ``image_dir/*.png`` with the same-named file in ``label_dir``.

    Raises ApodaError if a folder is missing or an image has no label, naming the first such.
    """
    missing_dirs = [str(d) for d in (image_dir, label_dir) if not d.is_dir()]
    if missing_dirs:
        raise ApodaError(f"{root}: expected {layout} (missing {', '.join(missing_dirs)})")
    images = sorted(image_dir.glob("*.png"))
    labels = {p.name for p in label_dir.glob("*.png")}
    unlabelled = [p.name for p in images if p.name not in labels]
    if unlabelled:
        raise ApodaError(
            f"{len(unlabelled)} of {len(images)} images in {image_dir} have no label in "
            f"{label_dir} (first: {unlabelled[0]}); expected {layout}"
        )
    return [(p, label_dir / p.name) for p in images]
