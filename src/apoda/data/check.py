"""`apoda data check`: every file of a folder dataset read once; counts, sizes, class fractions
and every problem, each with the file it is in.

Problems: a classes.yaml that does not parse (an error, before anything else), files outside a
split folder, images without a label and labels without an image (where the split has
labels), two files of one stem, labels that are not PNG, unreadable files, 16-bit files, labels
whose mode does not fit `labels:` (grey/palette for index, RGB for color), label sizes that
differ from their image's, and label values that are neither a class nor the ignore value.

The fast variant (`decode=False`, what training runs) reads every file's header only: all of
the above but the unreadable pixel data and the label values."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from apoda.data.classes import tail_classes
from apoda.data.folder import (
    IMAGE_SUFFIXES,
    IMAGES,
    LABELS,
    LAYOUT,
    ClassList,
    inspect_file,
    list_split,
    read_classes,
    splits_of,
)
from apoda.errors import ApodaError

Size = tuple[int, int]
SHOWN_PROBLEMS = 3
"""How many problems a refused training run names."""


@dataclass
class SplitReport:
    """What one split holds: counts, sizes, per-class pixels (and ignored, unknown: the last two
    bins) when decoded, and its problems (file, what is wrong)."""

    split: str
    images: int = 0
    labels: int = 0
    image_sizes: Counter[Size] = field(default_factory=Counter)
    pixels: np.ndarray | None = None
    problems: list[tuple[Path, str]] = field(default_factory=list)

    def fractions(self, classes: ClassList) -> dict[str, float] | None:
        """Each class's share of the labelled pixels; None without labelled pixels."""
        if self.pixels is None or not self.pixels[:-2].sum():
            return None
        share = self.pixels[:-2] / self.pixels[:-2].sum()
        return {name: float(f) for name, f in zip(classes.names, share, strict=True)}


@dataclass
class FolderReport:
    """The check of one folder dataset: its class list, a report per split, and problems
    outside any split."""

    root: Path
    classes: ClassList
    decoded: bool
    splits: dict[str, SplitReport] = field(default_factory=dict)
    problems: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def all_problems(self) -> list[tuple[Path, str]]:
        """Every problem, split by split."""
        return [*self.problems, *(p for s in self.splits.values() for p in s.problems)]

    def tail(self) -> tuple[list[str], str]:
        """Tail classes and where they come from: classes.yaml, else the train split's labels."""
        if self.classes.tail is not None:
            return list(self.classes.tail), "classes.yaml"
        train = self.splits.get("train")
        fractions = train.fractions(self.classes) if train is not None else None
        if fractions is None:
            return [], "none: no labelled train pixels"
        return tail_classes(fractions), "under 1 % of the train split's labelled pixels"

    def require_clean(self) -> None:
        """ApodaError naming the first problems, when there are any."""
        problems = self.all_problems
        if problems:
            shown = "; ".join(
                f"{self.relative(p)}: {what}" for p, what in problems[:SHOWN_PROBLEMS]
            )
            more = len(problems) - SHOWN_PROBLEMS
            more_text = f" (and {more} more)" if more > 0 else ""
            raise ApodaError(
                f"{self.root} fails the data check with {_count(len(problems), 'problem')}: {shown}"
                f"{more_text}; `apoda data check {self.root}` lists them all"
            )

    def require_one_size(self, split: str, remedy: str) -> None:
        """ApodaError when the images of a split come in several sizes (their labels, checked
        to match them, too)."""
        sizes = self.splits.get(split, SplitReport(split)).image_sizes
        if len(sizes) > 1:
            raise ApodaError(
                f"{self.root / IMAGES / split}: images of {len(sizes)} sizes "
                f"({_sizes_text(sizes)}); {remedy}"
            )

    def relative(self, path: Path) -> str:
        """A path as shown in the report: relative to the root."""
        return path.relative_to(self.root).as_posix() if self.root in path.parents else str(path)


def scan_folder(
    root: str | Path, classes: ClassList | None = None, decode: bool = True, progress: bool = False
) -> FolderReport:
    """Check a folder dataset (see the module docstring). `classes`: the ClassList its labels
    are read with (default: its own classes.yaml)."""
    root = Path(root)
    if not (root / IMAGES).is_dir():
        raise ApodaError(f"{root}: no {IMAGES} folder; expected {LAYOUT}")
    report = FolderReport(root, classes or read_classes(root), decode)
    for sub in (IMAGES, LABELS):
        folder = root / sub
        stray = sorted(
            p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        report.problems += [(p, f"not in a split folder ({sub}/train/, {sub}/val/)") for p in stray]
    listed = [list_split(root, split) for split in splits_of(root)]
    total = sum(len(f.pairs) + len(f.orphans) for f in listed)
    bar = tqdm(total=total, desc=f"check {root}", unit="file", disable=not progress)
    for files in listed:
        split = SplitReport(files.split, problems=list(files.problems))
        if decode:
            split.pixels = np.zeros(report.classes.scheme.num_classes + 2, dtype=np.int64)
        report.splits[files.split] = split
        for image, label in [*files.pairs, *((None, orphan) for orphan in files.orphans)]:
            _check_pair(report, split, image, label)
            bar.update()
    bar.close()
    return report


def _check_pair(
    report: FolderReport, split: SplitReport, image: Path | None, label: Path | None
) -> None:
    """Inspect an image and its label (either may be missing) into `split`."""
    classes, image_size = report.classes, None
    if image is not None:
        split.images += 1
        image_size, problem, _ = inspect_file(image, "image", classes, report.decoded)
        if image_size is not None:
            split.image_sizes[image_size] += 1
        if problem:
            split.problems.append((image, problem))
    if label is None:
        return
    split.labels += 1
    size, problem, raw = inspect_file(label, "label", classes, report.decoded)
    if problem:
        split.problems.append((label, problem))
    if image is not None and image_size is not None and size is not None and size != image_size:
        split.problems.append(
            (label, f"label of {_size(size)} but its image {image.name} is {_size(image_size)}")
        )
    if raw is None or split.pixels is None:
        return
    indices, unknown = classes.decode(raw)
    split.pixels[:-1] += np.bincount(indices.ravel(), minlength=256)[
        [*range(classes.scheme.num_classes), 255]
    ]
    if unknown.size:
        values = [classes.value(int(c)) for c in np.unique(unknown)]
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        split.problems.append(
            (label, f"{unknown.size} pixels of values not in classes.yaml ({shown})")
        )
        split.pixels[-1] += unknown.size
        split.pixels[-2] -= unknown.size


def _size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def _sizes_text(sizes: Counter[Size]) -> str:
    """'64x32' for one size; 'N sizes: WxH (n), ...' for several, commonest first."""
    common = sizes.most_common()
    if len(common) == 1:
        return _size(common[0][0])
    shown = ", ".join(f"{_size(s)} ({n})" for s, n in common[:3])
    return shown + (", ..." if len(common) > 3 else "")


def format_report(report: FolderReport) -> str:
    """The report as one table (a column per split; tail classes starred) and the problems,
    one line each, naming the file."""
    classes, splits = report.classes, list(report.splits.values())
    tail, tail_from = report.tail()
    rows: list[tuple[str, list[str]]] = [
        ("images", [str(s.images) for s in splits]),
        ("labels", [str(s.labels) for s in splits]),
        ("image sizes", [_sizes_text(s.image_sizes) if s.image_sizes else "-" for s in splits]),
    ]
    fractions = [s.fractions(classes) for s in splits]
    for name in classes.names:
        label = f"*{name}" if name in tail else name
        rows.append((label, [_percent(f[name]) if f else "-" for f in fractions]))
    totals = [s.pixels.sum() if s.pixels is not None else 0 for s in splits]
    rows.append(
        (
            "ignored pixels",
            [
                _percent(s.pixels[-2] / t) if s.pixels is not None and t else "-"
                for s, t in zip(splits, totals, strict=True)
            ],
        )
    )
    rows.append(("problems", [str(len(s.problems)) for s in splits]))
    header = ["", *(s.split for s in splits)]
    lines = [
        f"{report.root}: {len(classes.names)} classes ({classes.labels} labels) from "
        f"{classes.where}; * = tail ({tail_from})",
        "| " + " | ".join(header) + " |",
        "|---" + "|---:" * len(splits) + "|",
        *("| " + " | ".join([label, *cells]) + " |" for label, cells in rows),
    ]
    problems = report.all_problems
    lines.append(_count(len(problems), "problem"))
    lines += [f"{report.relative(path)}: {what}" for path, what in problems]
    return "\n".join(lines)


def _percent(value: float) -> str:
    return f"{100 * value:.2f} %"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
