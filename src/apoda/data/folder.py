"""Folder datasets of one's own classes: no code, a layout and a ``classes.yaml``.

Layout (the same for a source and a target domain)::

    ROOT/classes.yaml
    ROOT/images/SPLIT/**/NAME.png|.jpg|.jpeg    (SPLIT: train, val, ...; subfolders allowed)
    ROOT/labels/SPLIT/**/NAME.png               (same relative path and stem as the image)

A source needs ``train`` with labels; a target needs ``train`` (labels not needed, not used)
and ``val`` with labels (evaluation). ``classes.yaml`` lists the classes in the model's output
order and how the label PNGs encode them::

    labels: index            # index: 8-bit grey or palette PNGs of class indices; color: RGB
    ignore: 255              # the value (index) or [R, G, B] (color) that marks unlabelled pixels
    classes:
      - {name: road, index: 0, color: [128, 64, 128]}   # color: optional for index labels
      - {name: car, index: 1}
    tail: [car]              # optional; else the classes under 1 % of the source's pixels
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from apoda.data.classes import IGNORE_INDEX, ClassScheme, custom_scheme, distinct_colors
from apoda.data.io import DatasetOptions, SegmentationDataset
from apoda.errors import ApodaError

if TYPE_CHECKING:
    from typing_extensions import Unpack

CLASSES_FILE = "classes.yaml"
IMAGES, LABELS = "images", "labels"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUT = (
    "folder layout ROOT/classes.yaml, ROOT/images/SPLIT/**/NAME.png|jpg and "
    "ROOT/labels/SPLIT/**/NAME.png"
)
MAX_CLASSES = 255
"""Class indices are written as 8-bit train ids, 255 being ignore."""

LabelEncoding = Literal["index", "color"]
RGB = tuple[int, int, int]
FileKind = Literal["image", "label"]
_TOP_KEYS = ("labels", "ignore", "classes", "tail")
_CLASS_KEYS = ("name", "index", "color")
_LABEL_MODES: dict[str, tuple[str, ...]] = {"index": ("L", "P"), "color": ("RGB", "RGBA", "P")}
_LABEL_EXPECTED = {
    "index": "8-bit grey or palette PNGs of class indices",
    "color": "RGB PNGs of class colours",
}


# -- classes.yaml --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ClassList:
    """A ``classes.yaml``: class names in output order, their display colours, how label files
    encode them (``values``: an index, or a colour as 0xRRGGBB) and the ignore value."""

    where: str
    labels: LabelEncoding
    names: tuple[str, ...]
    colors: tuple[RGB, ...]
    values: tuple[int, ...]
    ignore: int
    tail: tuple[str, ...] | None = None

    @functools.cached_property
    def scheme(self) -> ClassScheme:
        """The class scheme of these classes (names and colours; no raw-id tables)."""
        return custom_scheme(self.where, self.names, self.colors)

    @classmethod
    def from_scheme(cls, scheme: ClassScheme) -> ClassList:
        """A built-in scheme's classes as train ids (index i is class i, 255 ignore)."""
        return cls(
            where=scheme.name,
            labels="index",
            names=scheme.class_names,
            colors=scheme.colors,
            values=tuple(range(scheme.num_classes)),
            ignore=IGNORE_INDEX,
        )

    def value(self, code: int) -> int | RGB:
        """A value as label files hold it: an index, or an (R, G, B) colour."""
        return code if self.labels == "index" else _rgb_of(code)

    def to_dict(self) -> dict[str, Any]:
        """The classes.yaml content (what checkpoints carry as their class list)."""
        classes = []
        for name, color, code in zip(self.names, self.colors, self.values, strict=True):
            entry: dict[str, Any] = {"name": name}
            if self.labels == "index":  # colour labels: the colour below is the value
                entry["index"] = code
            classes.append({**entry, "color": list(color)})
        out: dict[str, Any] = {
            "labels": self.labels,
            "ignore": _plain(self.value(self.ignore)),
            "classes": classes,
        }
        if self.tail is not None:
            out["tail"] = list(self.tail)
        return out

    @functools.cached_property
    def digest(self) -> str:
        """A short hash of the content: what statistics of labels read with it depend on."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @functools.cached_property
    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """The values sorted, and the class index of each."""
        order = np.argsort(np.asarray(self.values, dtype=np.int64))
        return np.asarray(self.values, dtype=np.int64)[order], order.astype(np.uint8)

    def decode(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [H, W] class indices, 255 for ignore and unknown values; the codes of the
        pixels whose value is neither a class nor ignore) of a label as read from its file."""
        codes = _codes(raw) if self.labels == "color" else raw.astype(np.int64)
        sorted_values, order = self._lookup
        pos = np.minimum(np.searchsorted(sorted_values, codes), len(sorted_values) - 1)
        known = sorted_values[pos] == codes
        indices = np.where(known, order[pos], np.uint8(IGNORE_INDEX)).astype(np.uint8)
        unknown = codes[~known & (codes != self.ignore)]
        return indices, unknown

    def require_names(self, names: Sequence[str], whose: str) -> None:
        """ApodaError unless these classes are `names`, in that order (`whose` list it is)."""
        if tuple(names) != self.names:
            raise ApodaError(
                f"{self.where} names the classes {list(self.names)} but {whose} has "
                f"{list(names)}; the class lists must agree (same names, same order)"
            )

    def write(self, path: Path) -> Path:
        """Write this class list as a classes.yaml."""
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None))
        return path


def _codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _rgb_of(code: int) -> RGB:
    return (code >> 16 & 255, code >> 8 & 255, code & 255)


def _plain(value: int | RGB) -> int | list[int]:
    return value if isinstance(value, int) else list(value)


def read_classes(root: str | Path) -> ClassList:
    """The ClassList of a folder dataset (``ROOT/classes.yaml``) or of a classes.yaml file."""
    path = Path(root)
    path = path / CLASSES_FILE if path.is_dir() else path
    if not path.is_file():
        raise ApodaError(f"{path} does not exist; a folder dataset names its classes there")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ApodaError(f"{path}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ApodaError(f"{path} is not valid YAML: {problem}{at}") from None
    return parse_classes(data, str(path))


def folder_classes(root: Path, fallback: ClassList) -> ClassList:
    """The class list a folder's labels are read with: its own classes.yaml, which must name
    `fallback`'s classes in the same order, else `fallback` (a run's or a model's)."""
    if not (root / CLASSES_FILE).is_file():
        return fallback
    own = read_classes(root)
    own.require_names(fallback.names, f"the class list of {fallback.where}")
    return own


Fail = Callable[[str, str, Any], ApodaError]


def parse_classes(data: Any, where: str) -> ClassList:
    """Check a classes.yaml mapping (see the module docstring); errors name `where` and the key."""

    def fail(key: str, expected: str, got: Any) -> ApodaError:
        return ApodaError(f"{where}: {key}: expected {expected}, got {got!r}")

    if not isinstance(data, dict):
        raise fail("top level", f"a mapping with keys {', '.join(_TOP_KEYS)}", data)
    unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
    if unknown:
        raise ApodaError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(_TOP_KEYS)}")
    labels = data.get("labels", "index")
    if labels not in ("index", "color"):
        raise fail("labels", "index or color", labels)
    entries = data.get("classes")
    if not isinstance(entries, list) or not 2 <= len(entries) <= MAX_CLASSES:
        got = f"{len(entries)} entries" if isinstance(entries, list) else entries
        raise fail("classes", f"a list of 2 to {MAX_CLASSES} classes", got)
    default_ignore: Any = IGNORE_INDEX if labels == "index" else [0, 0, 0]
    ignore = _value(data.get("ignore", default_ignore), labels, "ignore", fail)
    parsed = [_parse_class(entry, f"classes[{i}]", labels, fail) for i, entry in enumerate(entries)]
    names = [name for name, _, _ in parsed]
    codes = [code for _, code, _ in parsed]
    for i, (name, code, _) in enumerate(parsed):
        at = f"{where}: classes[{i}]"
        if names.index(name) < i:
            raise ApodaError(f"{at}.name: {name!r} is also classes[{names.index(name)}]")
        value = _plain(_rgb_of(code)) if labels == "color" else code
        if code == ignore:
            raise ApodaError(f"{at}: its value {value} is the ignore value")
        if codes.index(code) < i:
            raise ApodaError(f"{at}: its value {value} is also {names[codes.index(code)]!r}'s")
    tail = data.get("tail")
    if tail is not None:
        if not isinstance(tail, list) or not all(isinstance(t, str) for t in tail):
            raise fail("tail", "a list of class names", tail)
        strangers = [t for t in tail if t not in names]
        if strangers:
            raise ApodaError(f"{where}: tail: {strangers[0]!r} is not a class; classes: {names}")
    fallback = distinct_colors(len(names))
    return ClassList(
        where=where,
        labels=labels,
        names=tuple(names),
        colors=tuple(c or fallback[i] for i, (_, _, c) in enumerate(parsed)),
        values=tuple(codes),
        ignore=ignore,
        tail=None if tail is None else tuple(tail),
    )


def _parse_class(entry: Any, at: str, labels: str, fail: Fail) -> tuple[str, int, RGB | None]:
    """(name, value code, display colour or None) of one entry of `classes`."""
    key = "index" if labels == "index" else "color"
    if not isinstance(entry, dict):
        raise fail(
            at, f"a mapping with a name and {'an index' if key == 'index' else 'a color'}", entry
        )
    valid = _CLASS_KEYS if labels == "index" else ("name", "color")
    extra = [str(k) for k in entry if k not in valid]
    if extra:
        raise fail(
            f"{at}.{extra[0]}",
            f"only the keys {', '.join(valid)} (labels: {labels})",
            entry[extra[0]],
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail(f"{at}.name", "a class name", name)
    if key not in entry:
        raise fail(f"{at}.{key}", f"one for every class with labels: {labels}", None)
    code = _value(entry[key], labels, f"{at}.{key}", fail)
    color = entry.get("color")
    return (
        name,
        code,
        None if color is None else _rgb_of(_value(color, "color", f"{at}.color", fail)),
    )


def _value(raw: Any, labels: str, key: str, fail: Fail) -> int:
    """An index (0-255) or an [R, G, B] colour as its code; `fail` builds the error."""
    if labels == "index":
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 255:
            return raw
        raise fail(key, "an integer 0-255", raw)
    ok = isinstance(raw, list) and len(raw) == 3
    if not ok or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in raw
    ):
        raise fail(key, "a colour [R, G, B] of integers 0-255", raw)
    return int(_codes(np.asarray(raw)))


# -- files of a split ----------------------------------------------------------------------------
@dataclass
class SplitFiles:
    """One split's (image, label or None) pairs, its labels without an image, and the problems
    of listing them (file, what is wrong). `labelled`: the split has a labels folder."""

    split: str
    labelled: bool
    pairs: list[tuple[Path, Path | None]] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def _files(folder: Path) -> list[Path]:
    """Image-suffixed files below `folder`, sorted; hidden files and folders left out."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _by_stem(folder: Path, problems: list[tuple[Path, str]]) -> dict[Path, Path]:
    """The files of `folder` by relative path without suffix; a second file of one stem is a
    problem."""
    found: dict[Path, Path] = {}
    for path in _files(folder):
        key = path.relative_to(folder).with_suffix("")
        if key in found:
            problems.append((path, f"has the same stem as {found[key].name}; give each its own"))
        else:
            found[key] = path
    return found


def list_split(root: Path, split: str) -> SplitFiles:
    """Pair ``ROOT/images/SPLIT`` with ``ROOT/labels/SPLIT`` by relative path and stem."""
    image_dir, label_dir = root / IMAGES / split, root / LABELS / split
    files = SplitFiles(split, labelled=label_dir.is_dir())
    images = _by_stem(image_dir, files.problems)
    labels: dict[Path, Path] = {}
    for key, label in _by_stem(label_dir, files.problems).items():
        if label.suffix.lower() != ".png":
            files.problems.append((label, f"a {label.suffix} label; labels must be PNG (lossless)"))
        elif key not in images:
            files.problems.append((label, f"label without an image ({image_dir / key}.png/.jpg)"))
            files.orphans.append(label)
        else:
            labels[key] = label
    for key, image in images.items():
        if files.labelled and key not in labels:
            files.problems.append((image, f"image without a label ({label_dir / key}.png)"))
        files.pairs.append((image, labels.get(key)))
    if image_dir.is_dir() and not images:
        files.problems.append((image_dir, "no .png/.jpg images in this split"))
    return files


def splits_of(root: Path) -> list[str]:
    """The split folders under ``ROOT/images`` and ``ROOT/labels``."""
    return sorted(
        {
            d.name
            for sub in (IMAGES, LABELS)
            if (root / sub).is_dir()
            for d in (root / sub).iterdir()
            if d.is_dir() and not d.name.startswith(".")
        }
    )


# -- reading one file ----------------------------------------------------------------------------
def _png_bit_depth(path: Path) -> int | None:
    """The bit depth a PNG's header gives (None for other formats)."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    return head[24] if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 else None


def _mode_problem(path: Path, mode: str, kind: FileKind, classes: ClassList) -> str | None:
    """What keeps a file of this PIL mode from being read as an 8-bit image or label."""
    bits = 32 if mode in ("I", "F") else 16 if mode.startswith("I;16") else None
    if bits or _png_bit_depth(path) == 16:
        return f"a {bits or 16}-bit {kind}; expected 8 bits"
    if kind == "label" and mode not in _LABEL_MODES[classes.labels]:
        expected = _LABEL_EXPECTED[classes.labels]
        return f"a {mode} label; {classes.where} says labels: {classes.labels} ({expected})"
    return None


def inspect_file(
    path: Path, kind: FileKind, classes: ClassList, decode: bool
) -> tuple[tuple[int, int] | None, str | None, np.ndarray | None]:
    """(size (width, height), problem, pixels) of an image or label. The header alone gives
    size, mode and bit depth; `decode` reads every pixel too (labels: the raw values, [H, W]
    indices or [H, W, 3] colours). A problem leaves no pixels."""
    try:
        with Image.open(path) as img:
            problem = _mode_problem(path, img.mode, kind, classes)
            if problem is not None or not decode:
                return img.size, problem, None
            if kind == "image":
                img.load()
                return img.size, None, None
            pixels = img.convert("RGB") if classes.labels == "color" else img
            return img.size, None, np.asarray(pixels)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return None, f"unreadable: corrupt, truncated or not an image ({exc})", None
    except Image.DecompressionBombError as exc:
        return None, f"unreadable: {exc}", None


# -- the dataset ---------------------------------------------------------------------------------
class FolderDataset(SegmentationDataset):
    """One split of a folder dataset; labels are read with `classes` (values outside it are
    warned about once per file and ignored). ``labelled=False`` reads images only."""

    layout = LAYOUT

    def __init__(
        self,
        root: str | Path,
        classes: ClassList,
        *,
        split: str = "train",
        labelled: bool = True,
        **options: Unpack[DatasetOptions],
    ) -> None:
        self.classes = classes
        self.split = split
        self.labelled = labelled
        super().__init__(root, classes.scheme, **options)

    def _find_pairs(self) -> list[tuple[Path, Path | None]]:
        files = list_split(self.root, self.split)
        needed = [self.root / IMAGES / self.split]
        if self.labelled:
            needed.append(self.root / LABELS / self.split)
        missing = [str(d) for d in needed if not d.is_dir()]
        if missing:
            raise ApodaError(f"{self.root}: expected {LAYOUT} (missing {', '.join(missing)})")
        if files.problems:
            path, problem = files.problems[0]
            raise ApodaError(
                f"{path}: {problem} ({len(files.problems)} problems in {self.root}; "
                f"`apoda data check {self.root}` lists them)"
            )
        return [(image, label if self.labelled else None) for image, label in files.pairs]

    def _read_raw_label(self, path: Path) -> np.ndarray:
        _, problem, raw = inspect_file(path, "label", self.classes, decode=True)
        if problem is not None or raw is None:
            raise ApodaError(f"label {path}: {problem}")
        indices, unknown = self.classes.decode(raw)
        if unknown.size:
            values = [self.classes.value(int(c)) for c in np.unique(unknown)]
            self._warn_foreign(path, int(unknown.size), values, self.classes.where)
        return indices

    def identity(self) -> str:
        return f"{super().identity()}|{self.classes.digest}"
