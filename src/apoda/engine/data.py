"""Datasets and loaders of a run, from its config: labelled source, unlabelled target, target
validation at full label resolution; loaders that cycle independently and resume exactly."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from apoda.config import SOURCES, TARGETS, Config, DataConfig
from apoda.data import ClassScheme, SegmentationDataset, build_dataset, get_scheme
from apoda.data.check import scan_folder
from apoda.data.folder import ClassList, FolderDataset, folder_classes, read_classes
from apoda.data.transforms import AugmentConfig
from apoda.errors import ApodaError

MINICITY_FOLDERS = {
    "minicity": "source",
    "minicity_target": "target",
    "minicity_randomised": "randomised",
}


def minicity_root(data: DataConfig) -> Path:
    """The MiniCity folder for these settings, generated into the cache when missing."""
    from apoda.data.minicity import ensure_minicity

    return ensure_minicity(data.minicity)


def _size(value: list[int] | None) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


@dataclass
class RunData:
    """The three datasets of a run, their class scheme, and the class list that checkpoints
    carry (a folder source's classes.yaml; its `tail`, if it names one, is the run's)."""

    scheme: ClassScheme
    classes: ClassList
    source: SegmentationDataset
    target: SegmentationDataset
    val: SegmentationDataset


def build_run_data(config: Config, need_train: bool = True) -> RunData:
    """Build source, target-train and target-val datasets (roots and layouts checked here;
    for training, folder datasets pass the fast data check first)."""
    data = config.data
    if data.source not in SOURCES:
        raise ApodaError(f"data.source {data.source!r}: expected one of {', '.join(SOURCES)}")
    if data.target not in TARGETS:
        raise ApodaError(f"data.target {data.target!r}: expected one of {', '.join(TARGETS)}")
    uses_minicity = data.target == "minicity" or data.source.startswith("minicity")
    mini = minicity_root(data) if uses_minicity else None
    augment = None
    if data.flip or data.random_scale or data.crop or data.photometric:
        augment = AugmentConfig(
            random_scale=tuple(data.random_scale) if data.random_scale else None,
            crop=_size(data.crop),
            flip=data.flip,
            photometric=data.photometric,
        )
    common: dict[str, Any] = {"normalisation": data.normalisation, "seed": config.train.seed}

    def root_of(name: str, root: str | None, key: str) -> Path:
        if name.startswith("minicity"):
            assert mini is not None
            return mini / (MINICITY_FOLDERS[name] if key == "source_root" else "target")
        if root is None:
            raise ApodaError(f"data.{key} is not set: give the folder of the {name} dataset")
        return Path(root).expanduser()

    layouts = {"minicity": "gta5", "minicity_randomised": "gta5", "minicity_target": "cityscapes"}
    src_name = layouts.get(data.source, data.source)
    src_root = root_of(data.source, data.source_root, "source_root")
    tgt_root = root_of(data.target, data.target_root, "target_root")
    if data.source == "folder":
        classes = read_classes(src_root)
        scheme = classes.scheme
    else:
        scheme = get_scheme(data.scheme)
        classes = ClassList.from_scheme(scheme)
    tgt_classes = folder_classes(tgt_root, classes) if data.target == "folder" else classes
    if need_train:
        _check_folders(data, src_root, classes, tgt_root, tgt_classes)

    def target_split(split: str, **kwargs: Any) -> SegmentationDataset:
        size = _size(data.target_size)
        if data.target == "folder":
            return FolderDataset(tgt_root, tgt_classes, split=split, size=size, **kwargs, **common)
        return build_dataset("cityscapes", tgt_root, split, scheme, size=size, **kwargs, **common)

    val = target_split("val", label_full_res=True, max_items=data.max_val)
    if not need_train:
        return RunData(scheme, classes, val, val, val)
    source_options: dict[str, Any] = {
        "size": _size(data.source_size),
        "augment": augment,
        "max_items": data.max_source,
        **common,
    }
    if data.source == "folder":
        source: SegmentationDataset = FolderDataset(src_root, classes, **source_options)
    else:
        source = build_dataset(src_name, src_root, "train", scheme, **source_options)
    target = target_split("train", augment=augment, max_items=data.max_target, labelled=False)
    return RunData(scheme, classes, source, target, val)


def _check_folders(
    data: DataConfig, src_root: Path, classes: ClassList, tgt_root: Path, tgt_classes: ClassList
) -> None:
    """The fast data check (`apoda.data.check`: every file's header, no pixel data) of a run's
    folder datasets, and one size for what is batched at its file size."""
    if data.source == "folder":
        report = scan_folder(src_root, classes, decode=False)
        report.require_clean()
        if data.source_size is None and data.crop is None:
            report.require_one_size("train", "set data.source_size=[W,H] (or data.crop)")
    if data.target == "folder":
        report = scan_folder(tgt_root, tgt_classes, decode=False)
        report.require_clean()
        if data.target_size is None and data.crop is None:
            report.require_one_size("train", "set data.target_size=[W,H] (or data.crop)")
        if data.target_size is None or data.eval_batch_size > 1:
            report.require_one_size(
                "val",
                "set data.target_size=[W,H] and data.eval_batch_size=1 (labels are scored at "
                "their own size)",
            )


def source_stats(dataset: SegmentationDataset, name: str) -> dict[str, Any]:
    """Class statistics of the source labels, cached beside the dataset cache by root and size."""
    from apoda.data.minicity import cache_dir
    from apoda.data.stats import compute_stats

    key = f"{name}|{dataset.identity()}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = cache_dir() / "stats" / f"{name}-{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    stats = compute_stats(dataset, name, "train")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")  # parallel runs may compute it at once
    tmp.write_text(json.dumps(stats, indent=1))
    tmp.replace(path)
    return stats


class CyclingLoader:
    """Endless batches over a dataset: a fresh permutation per epoch from (seed, epoch), split
    across ranks so that R ranks see exactly the global batch one process would see.

    Its state is (epoch, batch position), so a resumed run reads the same batches."""

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        num_workers: int = 0,
    ) -> None:
        if batch_size % world:
            raise ApodaError(f"data.batch_size {batch_size} is not divisible by {world} ranks")
        self.dataset = dataset
        self.batch_size = batch_size
        self.per_rank = batch_size // world
        self.batches_per_epoch = len(dataset) // batch_size  # type: ignore[arg-type]
        if self.batches_per_epoch == 0:
            raise ApodaError(
                f"a dataset of {len(dataset)} images is smaller than data.batch_size {batch_size}"  # type: ignore[arg-type]
            )
        self.seed, self.rank, self.num_workers = seed, rank, num_workers
        self.epoch, self.position = 0, 0
        self._iter: Iterator[Any] | None = None

    def _epoch_indices(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(len(self.dataset), generator=gen).tolist()  # type: ignore[arg-type]
        picked = []
        for b in range(self.position, self.batches_per_epoch):
            batch = perm[b * self.batch_size : (b + 1) * self.batch_size]
            picked += batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        return picked

    def _start_epoch(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        loader = DataLoader(
            self.dataset,
            batch_size=self.per_rank,
            sampler=self._epoch_indices(),
            num_workers=self.num_workers,
            persistent_workers=False,
        )
        self._iter = iter(loader)

    def __next__(self) -> dict[str, Any]:
        if self._iter is None:
            self._start_epoch()
        assert self._iter is not None
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._iter)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the loader is: the next batch to read."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        self._iter = None
