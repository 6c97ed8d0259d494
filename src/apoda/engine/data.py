"""Datasets and loaders of a run, from its config (each dataset by name from
apoda.registry.DATASETS): labelled source, unlabelled target, target validation at full label
resolution; loaders that cycle independently and resume exactly."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from apoda.config import Config, DataConfig
from apoda.data import ClassScheme, SegmentationDataset, get_scheme
from apoda.data.folder import ClassList
from apoda.data.minicity import cache_dir
from apoda.data.sampling import RareClassSampling, cached_class_counts, crop_min_pixels
from apoda.data.stats import compute_stats
from apoda.data.transforms import AugmentConfig
from apoda.errors import ApodaError
from apoda.registry import DatasetEntry, get_dataset


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


def dataset_root(entry: DatasetEntry, name: str, data: DataConfig, role: str) -> Path:
    """Where a run reads its `role` dataset: generated (MiniCity's cache), else the config's
    `data.source_root` / `data.target_root`."""
    if entry.locate is not None:
        return Path(entry.locate(data, None))
    root = getattr(data, f"{role}_root")
    if root is None:
        raise ApodaError(f"data.{role}_root is not set: give the folder of the {name} dataset")
    return Path(root).expanduser()


def build_run_data(config: Config, need_train: bool = True) -> RunData:
    """Build source, target-train and target-val datasets (apoda.registry.DATASETS: roots and
    layouts checked here; for training, each dataset's own fast check first, if it has one)."""
    data = config.data
    src = get_dataset(data.source, "source", "data.source")
    tgt = get_dataset(data.target, "target", "data.target")
    augment = _augment(data)
    src_root = dataset_root(src, data.source, data, "source")
    tgt_root = dataset_root(tgt, data.target, data, "target")
    if src.classes is not None:
        classes = src.classes(src_root, None)
        scheme = classes.scheme
    else:
        scheme = get_scheme(data.scheme)
        classes = ClassList.from_scheme(scheme)
    tgt_classes = tgt.classes(tgt_root, classes) if tgt.classes is not None else classes
    if need_train and src.check is not None:
        src.check(src_root, classes, "source", data)
    if need_train and tgt.check is not None:
        tgt.check(tgt_root, tgt_classes, "target", data)
    tgt_labels = scheme if tgt.classes is None else tgt_classes
    common: dict[str, Any] = {"normalisation": data.normalisation, "seed": config.train.seed}
    size = _size(data.target_size)
    val = tgt.build(
        tgt_root,
        "val",
        tgt_labels,
        size=size,
        label_full_res=True,
        max_items=data.max_val,
        **common,
    )
    if not need_train:
        return RunData(scheme, classes, val, val, val)
    source = src.build(
        src_root,
        src.source_split,
        scheme if src.classes is None else classes,
        size=_size(data.source_size),
        augment=augment,
        max_items=data.max_source,
        **common,
    )
    target = tgt.build(
        tgt_root,
        "train",
        tgt_labels,
        size=size,
        augment=augment,
        max_items=data.max_target,
        labelled=False,
        **common,
    )
    return RunData(scheme, classes, source, target, val)


def build_probe_data(config: Config, images: int, run: RunData) -> SegmentationDataset:
    """The first `images` target training images at the training size, without augmentation,
    with their labels where the dataset has them (all-ignore otherwise): the pseudo-label
    probe's images (`apoda.engine.pseudo_probe`)."""
    data = config.data
    tgt = get_dataset(data.target, "target", "data.target")
    root = dataset_root(tgt, data.target, data, "target")
    labels = run.scheme if tgt.classes is None else tgt.classes(root, run.classes)
    options: dict[str, Any] = {
        "size": _size(data.target_size),
        "max_items": images,
        "normalisation": data.normalisation,
        "seed": config.train.seed,
    }
    try:
        return tgt.build(root, "train", labels, **options)
    except ApodaError:  # a target without training labels: agreement only
        return tgt.build(root, "train", labels, labelled=False, **options)


def _augment(data: DataConfig) -> AugmentConfig | None:
    """The training augmentation the config asks for; None without any."""
    if not (data.flip or data.random_scale or data.crop or data.photometric):
        return None
    crop = _size(data.crop)
    min_class_pixels = 0.0
    if crop is not None and data.rare_class_sampling:
        min_class_pixels = crop_min_pixels(data.rcs_min_pixels, data.rcs_min_crop_ratio, crop)
    return AugmentConfig(
        random_scale=tuple(data.random_scale) if data.random_scale else None,
        crop=crop,
        flip=data.flip,
        photometric=data.photometric,
        cat_max_ratio=data.crop_cat_max_ratio,
        min_class_pixels=min_class_pixels,
    )


def source_draw(config: Config, source: SegmentationDataset) -> Callable[..., list[Any]] | None:
    """The source loader's draw: rare-class sampling when the config asks for it, else None
    (a permutation per epoch). Its items are (index, class) where the crop must hold the
    drawn class (`data.rcs_min_crop_ratio`), indices otherwise."""
    data = config.data
    if not data.rare_class_sampling:
        return None
    counts = cached_class_counts(source, cache_dir())
    sampling = RareClassSampling.from_counts(counts, data.rcs_temperature, data.rcs_min_pixels)
    return sampling.draw_with_classes if data.rcs_min_crop_ratio > 0 else sampling.draw


def target_val_stats(
    val: SegmentationDataset, target: str, tail: list[str] | None
) -> dict[str, Any]:
    """Class statistics of a run's labelled target val split (cached as `source_stats`), with
    the tail classes evaluation uses (the source's) instead of the split's own rare ones."""
    stats = dict(source_stats(val, f"{target}-val"))
    stats.update(dataset=target, split="val")
    if tail:
        stats["tail_classes"] = list(tail)
    return stats


def source_stats(dataset: SegmentationDataset, name: str) -> dict[str, Any]:
    """Class statistics of the source labels, cached beside the dataset cache by root and size."""
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
    """Endless batches over a dataset: a fresh permutation per epoch from (seed, epoch), or as
    many indices from `draw(generator, n)` (rare-class sampling), split across ranks so that R
    ranks see exactly the global batch one process would see.

    Its state is (epoch, batch position), so a resumed run reads the same batches."""

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        num_workers: int = 0,
        draw: Callable[[torch.Generator, int], list[Any]] | None = None,
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
        self.draw = draw
        self.epoch, self.position = 0, 0
        self._iter: Iterator[Any] | None = None

    def _epoch_indices(self) -> list[Any]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        size = len(self.dataset)  # type: ignore[arg-type]
        perm = self.draw(gen, size) if self.draw else torch.randperm(size, generator=gen).tolist()
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
