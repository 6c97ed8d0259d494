"""Using trained models and datasets by name: score a checkpoint on a dataset (`apoda eval`),
rebuild a checkpoint's segmenter (also for `apoda predict`), class statistics
(`apoda data stats`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from apoda.checkpoints import load_checkpoint, load_module_state
from apoda.config import Config, DataConfig, config_from_dict
from apoda.data import SegmentationDataset, get_scheme
from apoda.data.classes import IGNORE_INDEX, ClassScheme
from apoda.data.folder import IMAGE_SUFFIXES as IMAGE_SUFFIXES  # what predict reads
from apoda.data.folder import ClassList, parse_classes
from apoda.distributed import resolve_device
from apoda.errors import ApodaError
from apoda.evaluation import evaluate_segmenter
from apoda.models import Segmenter
from apoda.models.build import architecture_from_config
from apoda.models.segmenter import upgrade_state_keys
from apoda.registry import DATASETS, DatasetEntry, get_dataset
from apoda.runs import EVAL_DIR_PREFIX, METRICS_FILE, checkpoint_file, writable_folder


def checkpoint_classes(state: dict[str, Any], config: Config, path: Path) -> ClassList:
    """The class list a checkpoint carries (names, colours, label encoding, ignore value);
    checkpoints from before class lists: their config's built-in scheme as train ids."""
    record = state.get("classes")
    if record is None:
        return ClassList.from_scheme(get_scheme(config.data.scheme))
    return parse_classes(record, f"checkpoint {path}")


def has_own_classes(config: Config) -> bool:
    """Whether a run's source brings its own class list (a folder's classes.yaml) rather than
    a built-in scheme."""
    return DATASETS.get(config.data.source).classes is not None


def checkpoint_scheme(state: dict[str, Any], config: Config, path: Path) -> ClassScheme:
    """The classes a checkpoint predicts: the class list of a run whose source has its own
    (folder), else the built-in scheme its config names (with the raw-id tables of real data)."""
    if not has_own_classes(config):
        return get_scheme(config.data.scheme)
    return checkpoint_classes(state, config, path).scheme


def load_segmenter(path: str | Path) -> tuple[Segmenter, Config, dict[str, Any]]:
    """Rebuild the segmenter a checkpoint was trained with and load the weights its training
    evaluated (the segmenter, or the mean teacher of a self-training run that names it)."""
    path = checkpoint_file(path)
    state = load_checkpoint(path)
    config = config_from_dict(state["config"], saved=True)
    scheme = checkpoint_scheme(state, config, path)
    segmenter = architecture_from_config(config, scheme.num_classes)
    evaluated = state.get("evaluated", "segmenter")
    load_module_state(segmenter, state["modules"][evaluated], evaluated, path, upgrade_state_keys)
    segmenter.eval()
    return segmenter, config, state


def dataset_folder(entry: DatasetEntry, name: str, root: str | None, data: DataConfig) -> Path:
    """The folder of a dataset to score or measure: `root` (`--root`), or where a generated
    one is (MiniCity: `root` is checked, else the config's, generated when missing)."""
    if entry.locate is not None:
        return Path(entry.locate(data, root))
    if root is None:
        raise ApodaError(f"--root is required for {name}: the folder of the dataset")
    return Path(root).expanduser()


def _same_folder(root: str | None, run_root: str | None) -> bool:
    return (
        root is not None
        and run_root is not None
        and Path(run_root).expanduser() == Path(root).expanduser()
    )


def read_size(
    entry: DatasetEntry, name: str, root: str | None, data: DataConfig
) -> tuple[int, int] | None:
    """The size a run read a dataset at: its target's (the run's validation), unless the
    dataset can only be a source or is the run's source folder and not its target folder."""
    is_target = name == data.target and _same_folder(root, data.target_root)
    is_source = name == data.source and _same_folder(root, data.source_root)
    as_source = "target" not in entry.roles or (is_source and not is_target)
    size = data.source_size if as_source else data.target_size
    return (int(size[0]), int(size[1])) if size else None


def dataset_for(
    name: str,
    root: str | None,
    split: str | None,
    scheme: ClassScheme,
    config: Config | None = None,
    label_full_res: bool = True,
    classes: ClassList | None = None,
) -> tuple[SegmentationDataset, str]:
    """A labelled split of a registered dataset (default: `val` of one that can be a target,
    else its source split), read with `scheme`, or, for a dataset of its own classes (folder),
    with its class list checked against `classes` (the model's)."""
    entry = get_dataset(name, "scored", "dataset")
    data = config.data if config is not None else Config().data
    folder = dataset_folder(entry, name, root, data)
    split = split or ("val" if "target" in entry.roles else entry.source_split)
    labels: ClassScheme | ClassList = scheme
    if entry.classes is not None:
        labels = entry.classes(folder, classes or ClassList.from_scheme(scheme))
    dataset = entry.build(
        folder,
        split,
        labels,
        size=read_size(entry, name, root, data),
        normalisation=data.normalisation,
        label_full_res=label_full_res,
    )
    return dataset, split


def _check_fits(
    segmenter: Segmenter, dataset: SegmentationDataset, scheme: ClassScheme, device: torch.device
) -> None:
    """Before a whole evaluation: the model's classes are the scheme's, and its first image goes
    through (an image of another channel count or a label of another scheme fails here)."""
    if len(dataset) == 0:
        raise ApodaError(f"{dataset.root}: no images to evaluate on")
    if segmenter.num_classes != scheme.num_classes:
        raise ApodaError(
            f"the checkpoint predicts {segmenter.num_classes} classes but the class scheme "
            f"{scheme.name} of the data has {scheme.num_classes}"
        )
    item = dataset[0]
    labels = item["label"]
    outside = labels[(labels != IGNORE_INDEX) & (labels >= scheme.num_classes)]
    if outside.numel():
        raise ApodaError(
            f"{item.get('name', dataset.root)}: label values {sorted(set(outside.tolist()))[:5]} "
            f"are outside the {scheme.num_classes} classes of {scheme.name}"
        )
    with torch.no_grad():
        segmenter(item["image"][None].to(device))


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None,
    root: str | None,
    split: str | None,
    out: str | None,
    batch_size: int | None = None,
    colors: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """`apoda eval`: the field's protocol (full-resolution labels) on one split; metrics.json."""
    path = checkpoint_file(checkpoint)
    segmenter, config, state = load_segmenter(path)
    if data is None or (data == config.data.target and root is None):
        data, root = config.data.target, root or config.data.target_root
    get_dataset(data, "scored", "--data")  # after the run's imports: its own datasets too
    scheme = checkpoint_scheme(state, config, path)
    device = resolve_device(config.train.device)
    segmenter.to(device)
    classes = checkpoint_classes(state, config, path)
    dataset, split = dataset_for(data, root, split, scheme, config, classes=classes)
    _check_fits(segmenter, dataset, scheme, device)
    default = path.parent.parent / f"{EVAL_DIR_PREFIX}{data}-{split}"
    out_dir = writable_folder(Path(out) if out else default)
    if colors:
        writable_folder(Path(colors))
    tail = list(state.get("tail_classes") or [])
    metrics = evaluate_segmenter(
        segmenter,
        dataset,
        scheme,
        tail,
        device,
        batch_size or config.data.eval_batch_size,
        data,
        split,
        iteration=state.get("iteration"),
        checkpoint=str(path),
        progress=True,
    )
    out_file = out_dir / METRICS_FILE
    out_file.write_text(json.dumps(metrics, indent=1))
    if colors:
        from apoda.evaluation import predict_full_res, save_color_predictions

        with torch.no_grad():
            for i in range(len(dataset)):
                item = dataset[i]
                image = item["image"][None].to(device)
                pred = predict_full_res(segmenter, image, item["label"].shape[-2:]).cpu()
                save_color_predictions(pred, [item["name"]], scheme, colors)
    return metrics, out_file


def dataset_stats(
    name: str,
    root: str | None,
    split: str | None,
    scheme_name: str | None,
    out: str | None,
    plot: str | None,
    tail_from: str | None = None,
    cells: int | None = None,
) -> dict[str, Any]:
    """`apoda data stats`: class fractions of a dataset's labels, as JSON and a picture.

    Tail classes are the source's (the ones evaluation reports): a target split's own rare
    classes are not marked unless no source is known (`tail_from`, or the source split of a
    dataset that holds both domains, MiniCity's). A dataset of its own classes (folder) is read
    with them. `cells`: also each class's share of pixels in the stride x stride cells it owns."""
    from apoda.data.stats import cell_share, compute_stats
    from apoda.engine.data import source_stats
    from apoda.report import plot_class_distribution

    for target in (out, plot):
        if target:
            writable_folder(Path(target).parent)
    entry = get_dataset(name, "scored", "dataset")
    scheme, classes = _stats_classes(entry, name, root, scheme_name)
    source: SegmentationDataset | None = None
    if "target" in entry.roles and entry.source_split != "train":  # both domains: MiniCity
        folder = dataset_folder(entry, name, root, Config().data)
        source = entry.build(folder, entry.source_split, scheme if classes is None else classes)
    if source is not None and split in (None, entry.source_split):
        dataset, split = source, entry.source_split
    else:
        dataset, split = dataset_for(name, root, split, scheme, classes=classes)
    source_tail = _tail_classes_of(Path(tail_from), scheme) if tail_from else None
    stats = compute_stats(dataset, name, split, progress=True)
    if tail_from:
        stats["tail_classes"], stats["tail_from"] = source_tail, tail_from
    if cells:
        stats["cell_stride"], stats["cell_share"] = cells, cell_share(dataset, cells, progress=True)
    elif source is not None and dataset is not source:
        stats["tail_classes"] = source_stats(source, name)["tail_classes"]
        stats["tail_from"] = f"{name} source"
    if out:
        Path(out).write_text(json.dumps(stats, indent=1))
    if plot:
        plot_class_distribution({f"{name} {split}": stats}, plot)
    return stats


def _stats_classes(
    entry: DatasetEntry, name: str, root: str | None, scheme_name: str | None
) -> tuple[ClassScheme, ClassList | None]:
    """The classes `apoda data stats` reads a dataset with: `--scheme`, else the dataset's
    default scheme; a dataset of its own classes (folder): its class list, no `--scheme`."""
    if entry.classes is None:
        return get_scheme(scheme_name or entry.default_scheme), None
    if scheme_name:
        raise ApodaError(f"--scheme: {name} names its own classes (its class list); drop --scheme")
    classes = entry.classes(dataset_folder(entry, name, root, Config().data), None)
    return classes.scheme, classes


def _tail_classes_of(path: Path, scheme: ClassScheme) -> list[str]:
    """The tail classes a stats JSON (`apoda data stats --out`) lists, checked against `scheme`."""
    try:
        tail = json.loads(path.read_text())["tail_classes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ApodaError(
            f"--tail-from {path}: expected a stats JSON written by `apoda data stats --out` "
            f"({type(exc).__name__}: {exc})"
        ) from None
    unknown = sorted(set(tail) - set(scheme.class_names))
    if unknown:
        raise ApodaError(f"--tail-from {path}: classes {unknown} are not in {scheme.name}")
    return list(tail)
