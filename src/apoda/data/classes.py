"""Class schemes: the classes a model predicts, their colours, and how raw dataset ids map to them.

The Cityscapes table (names, label ids, train ids, colours) comes from ``cityscapesscripts`` so
that it cannot drift from the reference; SYNTHIA's raw ids are mapped onto the same names.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from apoda.errors import ApodaError

IGNORE_INDEX = 255
"""Label value that every loss, metric and statistic skips."""

_TRAIN_LABELS = sorted(
    (lab for lab in _CS_LABELS if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId
)
_CS_ID = {lab.name: lab.id for lab in _TRAIN_LABELS}
_CS_COLOR: dict[str, tuple[int, int, int]] = {
    lab.name: (int(lab.color[0]), int(lab.color[1]), int(lab.color[2])) for lab in _TRAIN_LABELS
}


def _id_mask(size: int, ids: Sequence[int]) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[list(ids)] = True
    mask.flags.writeable = False
    return mask


CITYSCAPES_LABEL_IDS = _id_mask(256, [lab.id for lab in _CS_LABELS if lab.id >= 0])
"""True at every id of the Cityscapes label table (0-33), train class or not: what a GTA5 or
Cityscapes label file may hold. Other values are not classes at all (a broken or foreign file)."""
SYNTHIA_LABEL_IDS = _id_mask(65536, range(23))
"""True at the raw class ids of SYNTHIA-RAND-CITYSCAPES (0 void ... 22 lane marking)."""

CITYSCAPES_CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN_LABELS)
"""The 19 Cityscapes train classes in train-id order, spelled as cityscapesscripts spells them."""
THING_CLASS_NAMES: tuple[str, ...] = CITYSCAPES_CLASS_NAMES[6:8] + CITYSCAPES_CLASS_NAMES[11:]
"""The classes whose cells DAFormer's ImageNet feature distance keeps (its configs' train ids 6,
7 and 11 to 18: traffic light and sign, the people and the vehicles)."""

# Raw SYNTHIA-RAND-CITYSCAPES class ids (red channel of GT/LABELS) of the 16 classes shared with
# Cityscapes; every other raw id is ignored.
_SYNTHIA_RAW_ID: dict[str, int] = {
    "road": 3,
    "sidewalk": 4,
    "building": 2,
    "wall": 21,
    "fence": 5,
    "pole": 7,
    "traffic light": 15,
    "traffic sign": 9,
    "vegetation": 6,
    "sky": 1,
    "person": 10,
    "rider": 17,
    "car": 8,
    "bus": 19,
    "motorcycle": 12,
    "bicycle": 11,
}


@dataclass(frozen=True, eq=False)
class ClassScheme:
    """The output classes of a model and the lookup tables that turn raw label ids into them.

    ``cityscapes_lut`` (uint8[256]) maps a Cityscapes label id (also GTA5's label values) to this
    scheme's index, 255 for ignore; ``synthia_lut`` (uint8[65536]) does the same for raw SYNTHIA
    class ids; both are None for a scheme of one's own classes (a ``classes.yaml``).
    ``eval_subsets`` names the index sets that mIoU is reported over. Compared by identity
    (``eq=False``) because numpy arrays have no single truth value.
    """

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    cityscapes_lut: np.ndarray | None
    synthia_lut: np.ndarray | None
    eval_subsets: dict[str, tuple[int, ...]]

    @property
    def num_classes(self) -> int:
        """Number of output classes (channels of the classifier)."""
        return len(self.class_names)

    def index(self, class_name: str) -> int:
        """Index of a class by name; ApodaError naming the scheme if it has no such class."""
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise ApodaError(
                f"class {class_name!r} is not in scheme {self.name!r}; "
                f"expected one of {', '.join(self.class_names)}"
            ) from None

    def lut(self, table: Literal["Cityscapes", "SYNTHIA"]) -> np.ndarray:
        """The raw-id lookup table of a label table; ApodaError when the scheme has none."""
        lut = self.cityscapes_lut if table == "Cityscapes" else self.synthia_lut
        if lut is None:
            raise ApodaError(
                f"class scheme {self.name!r} has no {table} label-id mapping; read {table} "
                "labels with a built-in scheme (data.scheme), and folder data with its own "
                "classes.yaml"
            )
        return lut


def _lut(size: int, id_of: Mapping[str, int], class_names: Sequence[str]) -> np.ndarray:
    """Read-only uint8 lookup table raw id -> position in ``class_names`` (255 elsewhere)."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for index, name in enumerate(class_names):
        if name in id_of:
            lut[id_of[name]] = index
    lut.flags.writeable = False
    return lut


def _make_scheme(
    name: str, class_names: tuple[str, ...], eval_subsets: dict[str, tuple[str, ...]]
) -> ClassScheme:
    """Build a scheme over a subset of the Cityscapes classes, with both id lookup tables."""
    return ClassScheme(
        name=name,
        class_names=class_names,
        colors=tuple(_CS_COLOR[c] for c in class_names),
        cityscapes_lut=_lut(256, _CS_ID, class_names),
        synthia_lut=_lut(65536, _SYNTHIA_RAW_ID, class_names),
        eval_subsets={
            key: tuple(class_names.index(c) for c in names) for key, names in eval_subsets.items()
        },
    )


_SYNTHIA16_NAMES = tuple(c for c in CITYSCAPES_CLASS_NAMES if c in _SYNTHIA_RAW_ID)
_SYNTHIA13_NAMES = tuple(c for c in _SYNTHIA16_NAMES if c not in ("wall", "fence", "pole"))

CITYSCAPES19 = _make_scheme(
    "cityscapes19", CITYSCAPES_CLASS_NAMES, {"mIoU19": CITYSCAPES_CLASS_NAMES}
)
"""The 19 Cityscapes train classes. Its SYNTHIA table fills 16 of the 19 slots (the "19-slot
head": terrain, truck and train never occur in SYNTHIA labels)."""

SYNTHIA16 = _make_scheme(
    "synthia16", _SYNTHIA16_NAMES, {"mIoU16": _SYNTHIA16_NAMES, "mIoU13": _SYNTHIA13_NAMES}
)
"""The 16 classes SYNTHIA shares with Cityscapes; Cityscapes' terrain, truck, train are ignored.
Reported as mIoU16 and as mIoU13 (without wall, fence, pole)."""

_SCHEMES = {s.name: s for s in (CITYSCAPES19, SYNTHIA16)}


def custom_scheme(
    name: str, class_names: Sequence[str], colors: Sequence[tuple[int, int, int]]
) -> ClassScheme:
    """A scheme of one's own classes (no raw-id tables), reported as mIoU over all of them."""
    return ClassScheme(
        name=name,
        class_names=tuple(class_names),
        colors=tuple(colors),
        cityscapes_lut=None,
        synthia_lut=None,
        eval_subsets={f"mIoU{len(class_names)}": tuple(range(len(class_names)))},
    )


def distinct_colors(count: int) -> list[tuple[int, int, int]]:
    """``count`` well-separated colours (hues a golden-ratio step apart), for classes without
    one; the same every time."""
    colors = []
    for i in range(count):
        rgb = colorsys.hsv_to_rgb((0.1 + 0.618034 * i) % 1.0, 0.7 - 0.25 * (i // 8 % 2), 0.9)
        colors.append((round(255 * rgb[0]), round(255 * rgb[1]), round(255 * rgb[2])))
    return colors


def get_scheme(name: str) -> ClassScheme:
    """Look a scheme up by name ("cityscapes19" or "synthia16")."""
    try:
        return _SCHEMES[name]
    except KeyError:
        raise ApodaError(
            f"unknown class scheme {name!r}; expected one of {', '.join(sorted(_SCHEMES))}"
        ) from None


def palette_of(colors: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 [256, 3] palette: index i -> colors[i], every other index black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return palette


CITYSCAPES_PALETTE: np.ndarray = palette_of(CITYSCAPES19.colors)
"""uint8 [256, 3]: Cityscapes train id -> colour; 255 and unused ids are black."""
CITYSCAPES_PALETTE.flags.writeable = False


def scheme_palette(scheme: ClassScheme) -> np.ndarray:
    """uint8 [256, 3] palette of a scheme (for palette PNGs): index -> colour, others black."""
    return palette_of(scheme.colors)


def colorize(label: np.ndarray, scheme: ClassScheme) -> np.ndarray:
    """Colour a [H, W] map of scheme indices; ignore (255) and out-of-range values become black."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ApodaError(f"colorize expects a [H, W] label map, got shape {label.shape}")
    colors = np.asarray(scheme.colors, dtype=np.uint8)
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = (label >= 0) & (label < scheme.num_classes)
    out[valid] = colors[label[valid]]
    return out


def tail_classes(pixel_fraction: Mapping[str, float], threshold: float = 0.01) -> list[str]:
    """Classes holding under ``threshold`` of the labelled source pixels, in the given order."""
    if not 0.0 < threshold < 1.0:
        raise ApodaError(f"tail threshold must be in (0, 1), got {threshold}")
    return [name for name, frac in pixel_fraction.items() if frac < threshold]
