"""The built-in datasets, registered under the names a config types (`data.source: gta5`).

Importing this module registers all of them (apoda.registry.DATASETS imports it on first read).
They are registered here rather than beside each class for two reasons: the registration order
is the order errors and `--help` list them in, the one configs have always used (MiniCity's
three names sit around cityscapes), while apoda.data imports the modules in another order; and
MiniCity's glue (one generated folder read in two layouts under three names) belongs to none
of them. A dataset of one's own registers itself in its own file (docs/extending.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from apoda.data.cityscapes import CityscapesDataset
from apoda.data.classes import ClassScheme
from apoda.data.folder import ClassList, FolderDataset, folder_classes, read_classes
from apoda.data.gta5 import GTA5Dataset
from apoda.data.io import SegmentationDataset
from apoda.data.synthia import SynthiaDataset
from apoda.errors import ApodaError
from apoda.registry import register_dataset

if TYPE_CHECKING:
    from apoda.config import DataConfig

MINICITY_GTA5_SPLITS = ("source", "randomised")
"""MiniCity's splits in the GTA5 layout, each a sub-folder; the others are its target's."""


def _whole_folder(name: str, split: str) -> None:
    if split != "train":
        raise ApodaError(f"{name} has a single split 'train' (the whole folder), got {split!r}")


@register_dataset("gta5")
def gta5(root: Path, split: str, scheme: ClassScheme, **options: Any) -> SegmentationDataset:
    """GTA5: one split, `train`, the whole folder."""
    _whole_folder("gta5", split)
    return GTA5Dataset(root, scheme, **options)


@register_dataset("synthia", default_scheme="synthia16")
def synthia(root: Path, split: str, scheme: ClassScheme, **options: Any) -> SegmentationDataset:
    """SYNTHIA-RAND-CITYSCAPES: one split, `train`, the whole folder."""
    _whole_folder("synthia", split)
    return SynthiaDataset(root, scheme, **options)


# -- MiniCity: one generated folder -------------------------------------------------------------
def minicity_folder(data: DataConfig, folder: str | None) -> Path:
    """MiniCity's folder: one given on the command line (checked), else the one `data.minicity`
    describes, generated into the cache when missing."""
    if folder is None:
        from apoda.data.minicity import ensure_minicity

        return ensure_minicity(data.minicity)
    root = Path(folder).expanduser()
    missing = [str(root / sub) for sub in ("source", "target") if not (root / sub).is_dir()]
    if missing:
        raise ApodaError(
            f"{root} is not a MiniCity folder (missing {', '.join(missing)}); expected what "
            "`apoda data minicity --out DIR` writes, or no folder for the cache's MiniCity"
        )
    return root


def minicity_split(
    root: Path, split: str, scheme: ClassScheme, **options: Any
) -> SegmentationDataset:
    """A split of a MiniCity folder: `source` (the synthetic domain) and `randomised` in the
    GTA5 layout; the target's `train` and `val` (real domain) in the Cityscapes layout."""
    if split in MINICITY_GTA5_SPLITS:
        return GTA5Dataset(root / split, scheme, **options)
    return CityscapesDataset(root / "target", scheme, split=split, **options)


def _minicity(name: str, roles: tuple[str, ...], **options: Any) -> None:
    """Register a name for a MiniCity folder's splits (the folder: `minicity_folder`)."""
    register_dataset(name, roles, locate=minicity_folder, **options)(minicity_split)


_minicity("minicity", ("source", "target"), source_split="source")


@register_dataset("cityscapes", ("source", "target"))  # a source: the oracle
def cityscapes(root: Path, split: str, scheme: ClassScheme, **options: Any) -> SegmentationDataset:
    """Cityscapes: `train`, `val` or `test`."""
    return CityscapesDataset(root, scheme, split=split, **options)


# MiniCity's target labels as a source (the oracle); its domain-randomised split (pretraining)
_minicity("minicity_target", ("source",), scored=False)
_minicity("minicity_randomised", ("source",), source_split="randomised", scored=False)


# -- folder datasets: a layout and a classes.yaml (apoda.data.folder) ---------------------------
def folder_class_list(root: Path, fallback: ClassList | None) -> ClassList:
    """A source's own classes.yaml; a target's (or an evaluated folder's), which must name
    `fallback`'s classes in order, else `fallback`."""
    return read_classes(root) if fallback is None else folder_classes(root, fallback)


def check_folder(root: Path, classes: ClassList, role: str, data: DataConfig) -> None:
    """The fast data check (`apoda.data.check`: every file's header, no pixel data), and one
    size for what is batched at its file size."""
    from apoda.data.check import scan_folder

    report = scan_folder(root, classes, decode=False)
    report.require_clean()
    size = data.source_size if role == "source" else data.target_size
    if size is None and data.crop is None:
        report.require_one_size("train", f"set data.{role}_size=[W,H] (or data.crop)")
    if role == "target" and (data.target_size is None or data.eval_batch_size > 1):
        report.require_one_size(
            "val",
            "set data.target_size=[W,H] and data.eval_batch_size=1 (labels are scored at "
            "their own size)",
        )


@register_dataset("folder", ("source", "target"), classes=folder_class_list, check=check_folder)
def folder(root: Path, split: str, classes: ClassList, **options: Any) -> SegmentationDataset:
    """A folder dataset of one's own classes: any split under `images/`."""
    return FolderDataset(root, classes, split=split, **options)
